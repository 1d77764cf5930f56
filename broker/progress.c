/*
 * progress — see progress.h.
 */
#include "progress.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "util.h"

#define BAR 30

void cv_progress_init(cv_progress *p, const char *what, bool enabled) {
    memset(p, 0, sizeof(*p));
    p->what = what;
    p->enabled = enabled;
    p->tty = isatty(STDERR_FILENO);
    p->start_ms = p->last_ms = cv_mono_ms();
}

void cv_progress_update(cv_progress *p, uint64_t done, uint64_t total, const char *note) {
    if (!p->enabled)
        return;
    int64_t now = cv_mono_ms();
    if (now - p->last_ms < (p->tty ? 100 : 5000))
        return;
    p->last_ms = now;
    double secs = (double)(now - p->start_ms) / 1000.0;
    double rate = secs > 0 ? (double)done / secs : 0;
    if (!p->tty) {
        cv_log(CV_LOG_INFO, "progress",
               "command=%s done=%" PRIu64 " total=%" PRIu64 " rate=%.0f/s at=\"%s\"",
               p->what, done, total, rate, note ? note : "");
        return;
    }
    char bar[BAR + 1];
    double frac = total ? (double)done / (double)total : 0;
    if (frac > 1)
        frac = 1;
    int fill = (int)(frac * BAR);
    for (int i = 0; i < BAR; i++)
        bar[i] = i < fill ? '#' : (total ? '.' : ' ');
    bar[BAR] = '\0';
    if (total)
        fprintf(stderr,
                "\r%s [%s] %3.0f%% %" PRIu64 "/%" PRIu64 " %.0f msg/s %-30.30s\033[K",
                p->what, bar, frac * 100, done, total, rate, note ? note : "");
    else
        fprintf(stderr, "\r%s %" PRIu64 " %.0f msg/s %-30.30s\033[K", p->what, done, rate,
                note ? note : "");
    fflush(stderr);
    p->drawn = true;
}

void cv_progress_end(cv_progress *p) {
    if (p->enabled && p->tty && p->drawn) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
    }
    p->drawn = false;
}
