/*
 * daemon/periodic.c — see periodic.h.
 */
#include "daemon/periodic.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct cv_periodic {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    atomic_bool stop;
    cv_periodic_fn *fn;
    void *opaque;
    int64_t first_ms, interval_ms;
    char name[16];
};

/* Waits ms, or until stopped; true when stopped. Called with the lock. */
static bool wait_ms(cv_periodic *p, int64_t ms) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)(ms / 1000);
    until.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    while (!atomic_load(&p->stop) &&
           pthread_cond_timedwait(&p->cond, &p->lock, &until) != ETIMEDOUT)
        ;
    return atomic_load(&p->stop);
}

static void *run(void *arg) {
    cv_periodic *p = arg;
    pthread_setname_np(pthread_self(), p->name);
    pthread_mutex_lock(&p->lock);
    int64_t next = p->first_ms;
    while (!wait_ms(p, next)) {
        pthread_mutex_unlock(&p->lock);
        p->fn(p->opaque, &p->stop);
        pthread_mutex_lock(&p->lock);
        next = p->interval_ms;
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

int cv_periodic_start(const char *name, int64_t first_ms, int64_t interval_ms,
                      cv_periodic_fn *fn, void *opaque, cv_periodic **ret, char *errbuf,
                      size_t errlen) {
    *ret = NULL;
    cv_periodic *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->fn = fn;
    p->opaque = opaque;
    p->first_ms = first_ms;
    p->interval_ms = interval_ms;
    snprintf(p->name, sizeof(p->name), "%s", name);
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cond, NULL);
    int r = pthread_create(&p->thread, NULL, run, p);
    if (r != 0) {
        snprintf(errbuf, errlen, "cannot start thread %s: %s", name, strerror(r));
        pthread_mutex_destroy(&p->lock);
        pthread_cond_destroy(&p->cond);
        free(p);
        return -r;
    }
    *ret = p;
    return 0;
}

cv_periodic *cv_periodic_stop(cv_periodic *p) {
    if (!p)
        return NULL;
    pthread_mutex_lock(&p->lock);
    atomic_store(&p->stop, true);
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->lock);
    pthread_join(p->thread, NULL);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->cond);
    free(p);
    return NULL;
}
