/*
 * applog/pool.c — the worker threads that run the partitions of one
 * append in parallel, and the segment buffers that jobs pass on to each
 * other instead of keeping one per partition.
 */
#include "internal.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <zstd.h>

#include "util.h"

/* A segment's buffer holds its frames only from the first encode of an
 * append to the write at the end of the same job. Each job gives its
 * buffers back (cv_applog_i_buf_give) and the next job, of whatever partition, takes
 * them: the log keeps about one buffer per worker rather than one, as large
 * as the most it ever took in one batch, per partition it has written. */
void cv_applog_i_buf_take(cv_applog *log, cv_buf *b) {
    if (b->cap)
        return;
    pthread_mutex_lock(&log->spare_mu);
    if (log->nspare)
        *b = log->spare[--log->nspare];
    pthread_mutex_unlock(&log->spare_mu);
    b->len = 0;
}

void cv_applog_i_buf_give(cv_applog *log, cv_buf *b) {
    if (!b->cap)
        return;
    b->len = 0;
    pthread_mutex_lock(&log->spare_mu);
    bool kept = b->cap <= SPARE_BYTES_MAX && log->nspare < SPARE_MAX;
    if (kept)
        log->spare[log->nspare++] = *b;
    pthread_mutex_unlock(&log->spare_mu);
    if (!kept)
        cv_buf_release(b);
    cv_buf_init(b, BUF_LIMIT);
}

static void zwork_free(zwork *z) {
    if (!z)
        return;
    ZSTD_freeCCtx(z->cc);
    cv_buf_release(&z->pt);
    cv_buf_release(&z->z);
    free(z);
}

/* A job that compresses takes a context (COMPRESSION) set to the log's
 * level, like a buffer: one per running job, not one per partition.
 * NULL when memory ran out. */
zwork *cv_applog_i_zwork_take(cv_applog *log) {
    zwork *z = NULL;
    pthread_mutex_lock(&log->spare_mu);
    if (log->nzspare)
        z = log->zspare[--log->nzspare];
    pthread_mutex_unlock(&log->spare_mu);
    if (!z) {
        if (!(z = calloc(1, sizeof(*z))) || !(z->cc = ZSTD_createCCtx())) {
            free(z);
            return NULL;
        }
        cv_buf_init(&z->pt, FRAME_MAX);
        cv_buf_init(&z->z, FRAME_MAX + FRAME_MAX / 8);
    }
    if (ZSTD_isError(
            ZSTD_CCtx_setParameter(z->cc, ZSTD_c_compressionLevel, log->zlevel)) ||
        ZSTD_isError(ZSTD_CCtx_setParameter(z->cc, ZSTD_c_contentSizeFlag, 1))) {
        zwork_free(z);
        return NULL;
    }
    return z;
}

void cv_applog_i_zwork_give(cv_applog *log, zwork *z) {
    if (!z)
        return;
    z->pt.len = z->z.len = 0;
    pthread_mutex_lock(&log->spare_mu);
    bool kept = z->pt.cap <= SPARE_BYTES_MAX && log->nzspare < SPARE_MAX;
    if (kept)
        log->zspare[log->nzspare++] = z;
    pthread_mutex_unlock(&log->spare_mu);
    if (!kept)
        zwork_free(z);
}

void cv_applog_i_zwork_free_all(cv_applog *log) {
    while (log->nzspare)
        zwork_free(log->zspare[--log->nzspare]);
}

/* Takes and runs jobs until none is left; called with log->mu held. */
static void run_jobs_locked(cv_applog *log) {
    while (log->next_job < log->njobs) {
        part *p = log->jobs[log->next_job++];
        pthread_mutex_unlock(&log->mu);
        cv_applog_i_part_job(log, p);
        pthread_mutex_lock(&log->mu);
        if (++log->jobs_done == log->njobs)
            pthread_cond_signal(&log->done_cv);
    }
}

static void *worker(void *arg) {
    cv_applog *log = arg;
    /* The workers yield the CPU to the rest of the process (and to a
     * PostgreSQL on the same machine): a batch's log append normally ends
     * well inside the PostgreSQL transaction it runs beside, so it has time
     * to spare, and a store that waits for CPU slows every ack. */
    pthread_setname_np(pthread_self(), "cv-log-worker");
    setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), WORKER_NICE);
    pthread_mutex_lock(&log->mu);
    while (!log->stop) {
        run_jobs_locked(log);
        if (!log->stop)
            pthread_cond_wait(&log->work_cv, &log->mu);
    }
    pthread_mutex_unlock(&log->mu);
    return NULL;
}

/* Grows the pool to min(want, log->workers_max) workers. Without any, jobs run
 * on the caller. How many help depends on the sync method:
 *  - fdatasync: a job mostly waits for its fdatasyncs, and fdatasyncs that
 *    wait at the same time share journal commits and cache flushes (ext4's
 *    jbd2 commits once for every waiter of a transaction), so the pool
 *    grows with the partitions an append touches, not with the cores.
 *  - syncfs: a job only encodes and copies, which is CPU work. More workers
 *    than cores would only crowd out the rest of the machine: the nice
 *    level is per thread, so 64 runnable workers at nice 5 outweigh a
 *    PostgreSQL backend at nice 0 by 20 to 1. The pool stops at the
 *    number of cores, counted once by cv_applog_set_sync. */
static void pool_grow(cv_applog *log, size_t want) {
    if (want > log->workers_max)
        want = log->workers_max;
    if (!log->pool_up) {
        if (pthread_mutex_init(&log->mu, NULL) != 0)
            return;
        if (pthread_cond_init(&log->work_cv, NULL) != 0) {
            pthread_mutex_destroy(&log->mu);
            return;
        }
        if (pthread_cond_init(&log->done_cv, NULL) != 0) {
            pthread_cond_destroy(&log->work_cv);
            pthread_mutex_destroy(&log->mu);
            return;
        }
        log->th = calloc(WORKERS_MAX, sizeof(*log->th));
        if (!log->th) {
            pthread_cond_destroy(&log->done_cv);
            pthread_cond_destroy(&log->work_cv);
            pthread_mutex_destroy(&log->mu);
            return;
        }
        log->pool_up = true;
    }
    if (log->nth >= want)
        return;
    /* Workers take no signals: those stay with the application's threads.
     * They need little stack. */
    pthread_attr_t attr;
    bool attr_ok = pthread_attr_init(&attr) == 0;
    if (attr_ok)
        pthread_attr_setstacksize(&attr, WORKER_STACK);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    while (log->nth < want &&
           pthread_create(&log->th[log->nth], attr_ok ? &attr : NULL, worker, log) == 0)
        log->nth++;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (attr_ok)
        pthread_attr_destroy(&attr);
}

void cv_applog_i_pool_stop(cv_applog *log) {
    if (!log->pool_up)
        return;
    pthread_mutex_lock(&log->mu);
    log->stop = true;
    pthread_cond_broadcast(&log->work_cv);
    pthread_mutex_unlock(&log->mu);
    for (size_t i = 0; i < log->nth; i++)
        pthread_join(log->th[i], NULL);
    free(log->th);
    free(log->jobs);
    pthread_cond_destroy(&log->done_cv);
    pthread_cond_destroy(&log->work_cv);
    pthread_mutex_destroy(&log->mu);
    log->pool_up = false;
}

/* Runs cv_applog_i_part_job (writer.c) for every partition of tp: on the
 * workers when there are several, on the caller for one. */
void cv_applog_i_run_parts(cv_applog *log, part **tp, size_t ntp) {
    if (ntp > 1)
        pool_grow(log, ntp);
    if (ntp == 1 || log->nth == 0) {
        for (size_t k = 0; k < ntp; k++)
            cv_applog_i_part_job(log, tp[k]);
        return;
    }
    pthread_mutex_lock(&log->mu);
    log->jobs = tp;
    log->njobs = ntp;
    log->next_job = log->jobs_done = 0;
    pthread_cond_broadcast(&log->work_cv);
    while (log->jobs_done < log->njobs)
        pthread_cond_wait(&log->done_cv, &log->mu);
    log->jobs = NULL;
    log->njobs = log->next_job = log->jobs_done = 0;
    pthread_mutex_unlock(&log->mu);
}
