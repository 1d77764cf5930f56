/*
 * lag — see lag.h. The document is a jansson tree built as the caller
 * walks its channels, dumped once at the end; numbers that the document
 * rounds are rounded here, so both writers round alike.
 */
#include "obs/lag.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- status rules ---- */

static const char *const status_names[CV_LAG__COUNT] = {"OK", "WARN", "STALL", "STOP",
                                                        "ERR"};

const char *cv_lag_status_name(cv_lag_status s) {
    return (unsigned)s < CV_LAG__COUNT ? status_names[s] : "?";
}

int cv_lag_status_parse(const char *name, cv_lag_status *ret_status) {
    for (int s = 0; s < CV_LAG__COUNT; s++)
        if (strcmp(name, status_names[s]) == 0) {
            *ret_status = (cv_lag_status)s;
            return 0;
        }
    return -EINVAL;
}

cv_lag_status cv_lag_status_eval(const cv_lag_sample *s, size_t n, int64_t window_ms,
                                 bool stores_down, const char **ret_why) {
    const char *why_tmp;
    const char **why = ret_why ? ret_why : &why_tmp;
    if (stores_down) {
        *why = "a store is down: acks cannot be made";
        return CV_LAG_ERR;
    }
    if (n == 0) {
        *why = "no data yet";
        return CV_LAG_OK;
    }
    const cv_lag_sample *now = &s[n - 1];
    if (now->lag <= 0) {
        *why = "no lag";
        return CV_LAG_OK;
    }
    /* First sample of the window: the newest one at or before the start. */
    size_t first = 0;
    for (size_t i = 0; i < n; i++)
        if (s[i].t_ms <= now->t_ms - window_ms)
            first = i;
    const cv_lag_sample *base = &s[first];
    if (now->t_ms - base->t_ms < window_ms / 2) {
        *why = "not enough history yet";
        return CV_LAG_OK;
    }
    bool lag_all_window =
        now->lag_since_ms > 0 && now->lag_since_ms <= now->t_ms - window_ms;
    if (now->acked == base->acked && lag_all_window) {
        if (now->consumed != base->consumed || now->inflight > 0) {
            *why = "records consumed but acks not advancing";
            return CV_LAG_STALL;
        }
        *why = "nothing consumed while records wait in Kafka";
        return CV_LAG_STOP;
    }
    if (now->acked == base->acked) {
        *why = "lag appeared less than a window ago";
        return CV_LAG_OK;
    }
    /* Growth counts only when the lag stayed above zero for the whole
     * window: a channel whose lag touched zero meanwhile keeps up, however
     * its last few samples look (one message of a quiet channel waiting for
     * its batch is a lag of 1 that "grew" from 0). */
    bool growing = lag_all_window && now->lag > base->lag;
    for (size_t i = first + 1; growing && i < n; i++)
        if (s[i].lag < s[i - 1].lag)
            growing = false;
    if (growing) {
        *why = "lag growing over the window";
        return CV_LAG_WARN;
    }
    *why = "acks advancing";
    return CV_LAG_OK;
}

cv_lag_status cv_lag_status_eval_pair(const cv_lag_sample *before,
                                      const cv_lag_sample *after, bool stores_down,
                                      const char **ret_why) {
    cv_lag_sample s[2] = {*before, *after};
    s[0].lag_since_ms = s[0].lag > 0 ? s[0].t_ms : 0;
    s[1].lag_since_ms = s[1].lag <= 0 ? 0 : s[0].lag > 0 ? s[0].t_ms : s[1].t_ms;
    return cv_lag_status_eval(s, 2, after->t_ms - before->t_ms, stores_down, ret_why);
}

/* ---- the document ---- */

struct cv_lagdoc {
    cv_lagdoc_source source;
    json_t *root, *channels, *parts; /* parts: the last channel's */
    bool oom;
    cv_lag_status worst;
    int64_t lag, age_us_max, inflight, consumed, acked, rejected, duplicate;
    double rate, age_s_max;
};

/* Takes `v` (NULL: out of memory) into object `o` as member `k`. */
static void put(cv_lagdoc *d, json_t *o, const char *k, json_t *v) {
    if (!v || json_object_set_new(o, k, v) < 0)
        d->oom = true;
}

static json_t *jint(int64_t v) {
    return json_integer((json_int_t)v);
}

/* `v` rounded as printf's `fmt` would write it, as a JSON number; null
 * when it is not finite (JSON has no NaN). */
static json_t *jreal(double v, const char *fmt) {
    if (!isfinite(v))
        return json_null();
    char s[64];
    snprintf(s, sizeof(s), fmt, v);
    return json_real(strtod(s, NULL));
}

/* A quantile or latency: < 0 means none. */
static json_t *jq(double v) {
    return v < 0 ? json_null() : jreal(v, "%.6g");
}

/* A string; bytes that are not valid UTF-8 become U+FFFD. */
static json_t *jstr(const char *s) {
    if (!s)
        s = "";
    size_t len = strlen(s);
    if (cv_utf8_valid(s, len))
        return json_stringn(s, len);
    char *fixed = malloc(len * 3 + 1), *o = fixed;
    if (!fixed)
        return NULL;
    const char *p = s, *end = s + len;
    while (p < end) {
        size_t n = cv_utf8_char_len(p, (size_t)(end - p));
        if (n) {
            memcpy(o, p, n);
            o += n;
            p += n;
        } else {
            memcpy(o, "\xef\xbf\xbd", 3);
            o += 3;
            p++;
        }
    }
    json_t *j = json_stringn(fixed, (size_t)(o - fixed));
    free(fixed);
    return j;
}

static json_t *jbool(bool b) {
    return json_boolean(b);
}

int cv_lagdoc_new(const cv_lagdoc_head *h, cv_lagdoc **ret_doc) {
    cv_lagdoc *d = calloc(1, sizeof(*d));
    if (!d)
        return -ENOMEM;
    d->source = h->source;
    d->root = json_object();
    d->channels = json_array();
    if (!d->root || !d->channels) {
        json_decref(d->channels);
        cv_lagdoc_free(d);
        return -ENOMEM;
    }
    bool broker = h->source == CV_LAGDOC_BROKER;
    json_t *r = d->root;
    if (!broker)
        put(d, r, "source", json_string("direct"));
    put(d, r, "time_ms", jint(h->time_ms));
    put(d, r, "version", jstr(h->version));
    if (broker)
        put(d, r, "uptime_s", jreal(h->uptime_s, "%.1f"));
    put(d, r, "window_s", jreal(h->window_s, "%.1f"));
    if (broker)
        put(d, r, "tick_age_s", jreal(h->tick_age_s, "%.1f"));
    put(d, r, "degraded", jbool(h->degraded));
    if (broker) {
        put(d, r, "degraded_since_ms", jint(h->degraded_since_ms));
        json_t *k = json_object();
        if (k) {
            put(d, k, "up", jbool(h->kafka_up));
            put(d, k, "brokers_up", jint(h->kafka_brokers_up));
            put(d, k, "brokers_known", jint(h->kafka_brokers_known));
            put(d, k, "down_since_ms", jint(h->kafka_down_since_ms));
        }
        put(d, r, "kafka", k);
        put(d, r, "channels_overflow", jbool(h->channels_overflow));
    }
    put(d, r, "channels", d->channels);
    if (d->oom) {
        cv_lagdoc_free(d);
        return -ENOMEM;
    }
    *ret_doc = d;
    return 0;
}

int cv_lagdoc_add_channel(cv_lagdoc *d, const cv_lagdoc_channel *c) {
    bool broker = d->source == CV_LAGDOC_BROKER;
    json_t *o = json_object();
    d->parts = json_array();
    if (!o || !d->parts || json_array_append_new(d->channels, o) < 0) {
        json_decref(d->parts);
        d->parts = NULL;
        d->oom = true;
        return -ENOMEM;
    }
    put(d, o, "channel", jstr(c->channel));
    put(d, o, "status", json_string(cv_lag_status_name(c->status)));
    put(d, o, "why", jstr(c->why));
    put(d, o, "rate", jreal(c->rate, "%.2f"));
    put(d, o, "lag_messages", jint(c->lag));
    put(d, o, "lag_seconds", jreal(c->lag_seconds, "%.3f"));
    put(d, o, "inflight", jint(c->inflight));
    put(d, o, "consumed", jint(c->consumed));
    put(d, o, "acked", jint(c->acked));
    if (broker) {
        put(d, o, "stored_postgres", jint(c->stored_postgres));
        put(d, o, "stored_log", jint(c->stored_log));
    }
    put(d, o, "rejected", jint(c->rejected));
    put(d, o, "duplicate", jint(c->duplicate));
    if (broker) {
        put(d, o, "p50_s", jq(c->p50_s));
        put(d, o, "p99_s", jq(c->p99_s));
    }
    put(d, o, "partitions", d->parts);
    if (c->status > d->worst)
        d->worst = c->status;
    d->lag += c->lag;
    d->inflight += c->inflight;
    d->age_s_max = c->lag_seconds > d->age_s_max ? c->lag_seconds : d->age_s_max;
    d->consumed += c->consumed;
    d->acked += c->acked;
    d->rejected += c->rejected;
    d->duplicate += c->duplicate;
    d->rate += c->rate;
    return d->oom ? -ENOMEM : 0;
}

int cv_lagdoc_add_partition(cv_lagdoc *d, const cv_lagdoc_partition *p) {
    if (!d->parts)
        return -EINVAL;
    json_t *o = json_object();
    if (!o || json_array_append_new(d->parts, o) < 0) {
        d->oom = true;
        return -ENOMEM;
    }
    put(d, o, "topic", jstr(p->topic));
    put(d, o, "partition", jint(p->partition));
    put(d, o, "high_watermark", jint(p->high_watermark));
    put(d, o, "end_offset", jint(p->end_offset));
    put(d, o, "acked_offset", jint(p->acked_offset));
    if (d->source == CV_LAGDOC_BROKER)
        put(d, o, "consumed_offset", jint(p->consumed_offset));
    else
        put(d, o, "stored_offset", jint(p->stored_offset));
    put(d, o, "lag_messages", jint(p->lag));
    put(d, o, "lag_seconds", jreal(p->lag_seconds, "%.3f"));
    put(d, o, "inflight", jint(p->inflight));
    put(d, o, "assigned", jbool(p->assigned));
    return d->oom ? -ENOMEM : 0;
}

static json_t *tail_probe(cv_lagdoc *d, const cv_lagdoc_probe *p) {
    if (!p)
        return json_null();
    json_t *o = json_object();
    if (o) {
        put(d, o, "topic", jstr(p->topic));
        put(d, o, "sent", jint(p->sent));
        put(d, o, "acked", jint(p->acked));
        put(d, o, "last_ack_ms", jint(p->last_ack_ms));
        put(d, o, "last_latency_s", jq(p->last_latency_s));
        put(d, o, "p99_s", jq(p->p99_s));
    }
    return o;
}

static json_t *tail_drill(cv_lagdoc *d, const cv_lagdoc_drill *p) {
    if (!p)
        return json_null();
    json_t *o = json_object();
    if (o) {
        put(d, o, "interval_s", jint(p->interval_s));
        put(d, o, "last_ms", p->last_ms ? jint(p->last_ms) : json_null());
        put(d, o, "last_success_ms",
            p->last_success_ms ? jint(p->last_success_ms) : json_null());
        put(d, o, "last_passed", jbool(p->last_ms && p->last_passed));
        put(d, o, "last_seconds", jreal(p->last_seconds, "%.3f"));
        put(d, o, "last_sampled", jint(p->last_sampled));
        put(d, o, "last_detail", jstr(p->last_detail));
    }
    return o;
}

static json_t *tail_stores(cv_lagdoc *d, const cv_lagdoc_tail *t) {
    json_t *a = json_array();
    for (size_t i = 0; a && i < t->nstores; i++) {
        const cv_lagdoc_store *s = &t->stores[i];
        json_t *o = json_object();
        if (!o || json_array_append_new(a, o) < 0) {
            d->oom = true;
            break;
        }
        put(d, o, "name", jstr(s->name));
        put(d, o, "up", jbool(s->up));
        if (d->source == CV_LAGDOC_BROKER) {
            put(d, o, "errors", jint(s->errors));
            put(d, o, "last_error_ms", jint(s->last_error_ms));
        }
        put(d, o, "last_error", jstr(s->last_error));
    }
    return a;
}

static json_t *tail_rejects(cv_lagdoc *d, const cv_lagdoc_tail *t) {
    json_t *a = json_array();
    for (size_t i = 0; a && i < t->nrejects; i++) {
        const cv_lagdoc_reject *rj = &t->rejects[i];
        json_t *o = json_object();
        if (!o || json_array_append_new(a, o) < 0) {
            d->oom = true;
            break;
        }
        put(d, o, "time_ms", jint(rj->time_ms));
        put(d, o, "channel", jstr(rj->channel));
        put(d, o, "reason", jstr(rj->reason));
        put(d, o, "error", jstr(rj->error));
    }
    return a;
}

static int dump_to_buf(const char *s, size_t n, void *opaque) {
    return cv_buf_append(opaque, s, n) < 0 ? -1 : 0;
}

int cv_lagdoc_render(cv_lagdoc *d, const cv_lagdoc_tail *t, cv_buf *out) {
    bool broker = d->source == CV_LAGDOC_BROKER;
    json_t *r = d->root;
    if (t->stores_down)
        d->worst = CV_LAG_ERR;
    put(d, r, "status", json_string(cv_lag_status_name(d->worst)));
    json_t *tot = json_object();
    if (tot) {
        put(d, tot, "lag_messages", jint(d->lag));
        put(d, tot, "lag_seconds", jreal(d->age_s_max, "%.3f"));
        put(d, tot, "inflight", jint(d->inflight));
        put(d, tot, "rate", jreal(d->rate, "%.2f"));
        put(d, tot, "consumed", jint(d->consumed));
        put(d, tot, "acked", jint(d->acked));
        if (broker) {
            put(d, tot, "rejected", jint(d->rejected));
            put(d, tot, "duplicate", jint(d->duplicate));
            put(d, tot, "batches", jint(t->batches));
        }
    }
    put(d, r, "totals", tot);
    json_t *lat = json_object();
    if (lat) {
        put(d, lat, "p50_s", jq(t->p50_s));
        put(d, lat, "p99_s", jq(t->p99_s));
        if (broker) {
            put(d, lat, "pg_commit_p99_s", jq(t->pg_commit_p99_s));
            put(d, lat, "log_fsync_p99_s", jq(t->log_fsync_p99_s));
        }
    }
    put(d, r, "latency", lat);
    if (broker)
        put(d, r, "probe", tail_probe(d, t->probe));
    if (broker)
        put(d, r, "drill", tail_drill(d, t->drill));
    put(d, r, "stores", tail_stores(d, t));
    put(d, r, "rejected_recent", tail_rejects(d, t));
    if (d->oom)
        return -ENOMEM;
    /* 15 significant digits print every rounded value above as written. */
    size_t before = out->len;
    if (json_dump_callback(r, dump_to_buf, out,
                           JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(15)) <
            0 ||
        cv_buf_append(out, "\n", 1) < 0) {
        out->len = before;
        return -ENOBUFS;
    }
    return 0;
}

cv_lag_status cv_lagdoc_status(const cv_lagdoc *d) {
    return d->worst;
}

cv_lagdoc *cv_lagdoc_free(cv_lagdoc *d) {
    if (!d)
        return NULL;
    json_decref(d->root);
    free(d);
    return NULL;
}
