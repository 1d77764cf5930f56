/*
 * retention — see retention.h.
 */
#include "retention.h"

#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "access.h"
#include "applog/applog.h"
#include "chatvault.pb-c.h"
#include "cold/cold.h"
#include "pg/pgmigrate.h"
#include "pg/pgretention.h"
#include "util.h"

#define CLASS_NAME_MAX 64

/* ---- the rules -------------------------------------------------------- */

static bool class_name_ok(const char *s, size_t n) {
    if (n == 0 || n > CLASS_NAME_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.",
                    s[i]))
            return false;
    return true;
}

/* Splits "a=b, c=d" into trimmed items; calls fn for each name and value.
 * Returns NULL or what is wrong (in buf). */
typedef const char *item_fn(void *opaque, const char *name, size_t nlen,
                            const char *value, size_t vlen, char *buf, size_t len);
static const char *each_item(const char *v, item_fn *fn, void *opaque, char *buf,
                             size_t len) {
    const char *p = v;
    while (*p) {
        const char *end = strchr(p, ',');
        if (!end)
            end = p + strlen(p);
        const char *a = p, *b = end;
        while (a < b && (*a == ' ' || *a == '\t'))
            a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
            b--;
        if (a < b) {
            const char *eq = memchr(a, '=', (size_t)(b - a));
            if (!eq) {
                snprintf(buf, len, "\"%.*s\" is not NAME=VALUE", (int)(b - a), a);
                return buf;
            }
            const char *ne = eq, *vs = eq + 1;
            while (ne > a && (ne[-1] == ' ' || ne[-1] == '\t'))
                ne--;
            while (vs < b && (*vs == ' ' || *vs == '\t'))
                vs++;
            const char *why =
                fn(opaque, a, (size_t)(ne - a), vs, (size_t)(b - vs), buf, len);
            if (why)
                return why;
        }
        p = *end ? end + 1 : end;
    }
    return NULL;
}

static const char *parse_keep(const char *v, size_t n, int64_t *ret, char *buf,
                              size_t len) {
    char s[32];
    if (n == 0 || n >= sizeof(s)) {
        snprintf(buf, len, "\"%.*s\" is not a retention (e.g. 60d, 36h, forever)", (int)n,
                 v);
        return buf;
    }
    memcpy(s, v, n);
    s[n] = '\0';
    if (strcmp(s, "forever") == 0) {
        *ret = CV_RETENTION_FOREVER;
        return NULL;
    }
    int64_t secs;
    if (strcmp(s, "off") == 0 || cv_cold_parse_window(s, &secs) < 0 || secs <= 0) {
        snprintf(buf, len,
                 "\"%s\" is not a retention (a duration above 0 such as 60d, 36h, "
                 "90m or 600s, or forever)",
                 s);
        return buf;
    }
    *ret = secs;
    return NULL;
}

static const char *class_item(void *opaque, const char *name, size_t nlen,
                              const char *value, size_t vlen, char *buf, size_t len) {
    cv_retention_rules *r = opaque;
    if (!class_name_ok(name, nlen)) {
        snprintf(buf, len, "class name \"%.*s\" is not 1 to 64 of [A-Za-z0-9_.-]",
                 (int)nlen, name);
        return buf;
    }
    int64_t keep = 0;
    const char *why = parse_keep(value, vlen, &keep, buf, len);
    if (why || !r)
        return why;
    for (size_t i = 0; i < r->nclasses; i++)
        if (strlen(r->classes[i].name) == nlen &&
            !memcmp(r->classes[i].name, name, nlen)) {
            snprintf(buf, len, "class \"%.*s\" is given twice", (int)nlen, name);
            return buf;
        }
    cv_retention_class *nc = realloc(r->classes, (r->nclasses + 1) * sizeof(*nc));
    char *dup = nc ? strndup(name, nlen) : NULL;
    if (nc)
        r->classes = nc;
    if (!dup) {
        snprintf(buf, len, "out of memory");
        return buf;
    }
    r->classes[r->nclasses++] = (cv_retention_class){dup, keep};
    return NULL;
}

static ssize_t find_class(const cv_retention_rules *r, const char *name, size_t n) {
    for (size_t i = 0; i < r->nclasses; i++)
        if (strlen(r->classes[i].name) == n && memcmp(r->classes[i].name, name, n) == 0)
            return (ssize_t)i;
    return -1;
}

static const char *channel_item(void *opaque, const char *name, size_t nlen,
                                const char *value, size_t vlen, char *buf, size_t len) {
    cv_retention_rules *r = opaque;
    if (nlen == 0) {
        snprintf(buf, len, "a rule without a channel pattern before \"=\"");
        return buf;
    }
    if (!class_name_ok(value, vlen)) {
        snprintf(buf, len, "class name \"%.*s\" is not 1 to 64 of [A-Za-z0-9_.-]",
                 (int)vlen, value);
        return buf;
    }
    if (!r)
        return NULL;
    ssize_t c = find_class(r, value, vlen);
    if (c < 0) {
        snprintf(buf, len,
                 "channel rule %.*s names class \"%.*s\", which retention.classes "
                 "does not define",
                 (int)nlen, name, (int)vlen, value);
        return buf;
    }
    cv_retention_rule *nm = realloc(r->map, (r->nmap + 1) * sizeof(*nm));
    char *dup = nm ? strndup(name, nlen) : NULL;
    if (nm)
        r->map = nm;
    if (!dup) {
        snprintf(buf, len, "out of memory");
        return buf;
    }
    r->map[r->nmap++] = (cv_retention_rule){dup, (size_t)c};
    return NULL;
}

const char *cv_retention_check_classes(const char *v, char *buf, size_t len) {
    return each_item(v, class_item, NULL, buf, len);
}

const char *cv_retention_check_channels(const char *v, char *buf, size_t len) {
    return each_item(v, channel_item, NULL, buf, len);
}

void cv_retention_rules_release(cv_retention_rules *r) {
    for (size_t i = 0; i < r->nclasses; i++)
        free(r->classes[i].name);
    for (size_t i = 0; i < r->nmap; i++)
        free(r->map[i].pattern);
    free(r->classes);
    free(r->map);
    memset(r, 0, sizeof(*r));
}

int cv_retention_rules_load(const cv_config *cfg, cv_retention_rules *ret, char *errbuf,
                            size_t errlen) {
    memset(ret, 0, sizeof(*ret));
    char why[512];
    const char *bad = each_item(cv_config_str(cfg, "retention.classes"), class_item, ret,
                                why, sizeof(why));
    const char *key = "retention.classes";
    if (!bad) {
        key = "retention.channels";
        bad = each_item(cv_config_str(cfg, "retention.channels"), channel_item, ret, why,
                        sizeof(why));
    }
    if (!bad) {
        key = "retention.default_class";
        const char *d = cv_config_str(cfg, key);
        ssize_t c = find_class(ret, d, strlen(d));
        if (c < 0) {
            snprintf(why, sizeof(why), "class \"%s\" is not defined in retention.classes",
                     d);
            bad = why;
        } else {
            ret->default_class = (size_t)c;
        }
    }
    if (bad) {
        cv_errf(errbuf, errlen, "config key %s: %s", key, bad);
        cv_retention_rules_release(ret);
        return -EINVAL;
    }
    return 0;
}

size_t cv_retention_class_of(const cv_retention_rules *r, const char *channel) {
    for (size_t i = 0; i < r->nmap; i++)
        if (fnmatch(r->map[i].pattern, channel, 0) == 0)
            return r->map[i].cls;
    return r->default_class;
}

void cv_retention_format_keep(int64_t keep_s, char *buf, size_t len) {
    if (keep_s == CV_RETENTION_FOREVER)
        snprintf(buf, len, "forever");
    else if (keep_s % 86400 == 0)
        snprintf(buf, len, "%" PRId64 "d", keep_s / 86400);
    else if (keep_s % 3600 == 0)
        snprintf(buf, len, "%" PRId64 "h", keep_s / 3600);
    else if (keep_s % 60 == 0)
        snprintf(buf, len, "%" PRId64 "m", keep_s / 60);
    else
        snprintf(buf, len, "%" PRId64 "s", keep_s);
}

/* ---- one partition ---------------------------------------------------- */

typedef struct keep_ctx {
    const cv_retention_rules *rules;
    int64_t channel_keep_s, cutoff_ms, now_ms;
} keep_ctx;

/* The Kafka time (ms) before which a retention of keep_s has passed; a
 * retention longer than the epoch is old has nothing past it. */
static int64_t cutoff(int64_t now_ms, int64_t keep_s) {
    return keep_s >= now_ms / 1000 ? INT64_MIN : now_ms - keep_s * 1000;
}

/* Whether a record keeps its segment: too new, or a class of its own that
 * keeps it longer, or not readable (kept: retention never guesses). */
static bool keep_record(void *opaque, const cv_applog_record *rec) {
    const keep_ctx *k = opaque;
    if (rec->timestamp_ms >= k->cutoff_ms)
        return true;
    if (!rec->value)
        return true;
    Chatvault__V1__ChatMessage *m =
        chatvault__v1__chat_message__unpack(NULL, rec->value_len, rec->value);
    if (!m)
        return true;
    bool keep = false;
    if (m->retention_class && *m->retention_class) {
        ssize_t c = find_class(k->rules, m->retention_class, strlen(m->retention_class));
        int64_t s = c < 0 ? CV_RETENTION_FOREVER : k->rules->classes[c].keep_s;
        if (s > k->channel_keep_s)
            keep = s == CV_RETENTION_FOREVER || rec->timestamp_ms < 0 ||
                   rec->timestamp_ms >= cutoff(k->now_ms, s);
    }
    chatvault__v1__chat_message__free_unpacked(m, NULL);
    return keep;
}

/* PostgreSQL's rows at a dropped segment's offsets are deleted when their
 * Kafka timestamp is before the channel's cutoff too (retention.h): the
 * cutoff, within the years a timestamptz holds. */
static int64_t rows_before(const keep_ctx *k) {
    return k->cutoff_ms < INT64_C(-62135596800000) ? INT64_C(-62135596800000)
                                                   : k->cutoff_ms;
}

typedef struct part_ref {
    char *path, *topic;
    int32_t partition;
} part_ref;

typedef struct part_list {
    part_ref *v;
    size_t n;
} part_list;

static int collect_part(void *opaque, const char *path, const char *topic,
                        int32_t partition) {
    part_list *l = opaque;
    part_ref *nv = realloc(l->v, (l->n + 1) * sizeof(*nv));
    if (!nv)
        return -ENOMEM;
    l->v = nv;
    l->v[l->n] = (part_ref){strdup(path), strdup(topic), partition};
    if (!l->v[l->n].path || !l->v[l->n].topic) {
        free(l->v[l->n].path);
        free(l->v[l->n].topic);
        return -ENOMEM;
    }
    l->n++;
    return 0;
}

static bool selected(const cv_retention_conf *c, const char *channel, bool *seen) {
    if (!c->nchannels)
        return true;
    for (size_t i = 0; i < c->nchannels; i++)
        if (strcmp(c->channels[i], channel) == 0)
            return seen[i] = true;
    return false;
}

/* Removes what stood for a dropped segment: its file, or for one only in
 * the cold tier its object, its stub and its fetched copy. */
static int remove_segment(const cv_retention_conf *c, const cv_applog_expiry_candidate *g,
                          char *errbuf, size_t errlen) {
    if (!g->cold)
        return cv_applog_expiry_remove(g->dir, &g->e, 1, NULL, errbuf, errlen);
    char stub[4096];
    snprintf(stub, sizeof(stub), "%s/%s.cold", g->dir, g->e.segment);
    if (!c->cold) {
        cv_errf(
            errbuf, errlen,
            "expired log segment %s is only in the cold tier: set cold.target so that "
            "retention can remove it there",
            stub);
        return -EINVAL;
    }
    cv_applog_cold_stub st;
    int r = cv_applog_cold_stub_read(stub, &st, errbuf, errlen);
    if (r < 0)
        return r;
    if ((r = cv_cold_delete(c->cold, st.key, errbuf, errlen)) < 0)
        return r;
    if (unlink(stub) < 0 && errno != ENOENT) {
        r = -errno;
        cv_errf(errbuf, errlen, "removing cold-tier stub %s: %s", stub, strerror(-r));
        return r;
    }
    if ((r = cv_fsync_dir(g->dir)) < 0) {
        cv_errf(errbuf, errlen, "fsync of log directory %s: %s", g->dir, strerror(-r));
        return r;
    }
    if (g->src)
        unlink(g->src); /* the copy fetched into the cache */
    return 0;
}

/* Records, deletes, removes: the segments of `go` (one directory after
 * another, as the candidates come), in the order retention.h gives. */
static int apply_part(const cv_retention_conf *c, PGconn *conn, cv_retention_part *p,
                      cv_applog_expiry_candidate *go, size_t ngo, int64_t before_ms,
                      char *errbuf, size_t errlen) {
    cv_applog_expiry *e = malloc((ngo ? ngo : 1) * sizeof(*e));
    cv_offset_range *ranges = malloc((ngo ? ngo : 1) * sizeof(*ranges));
    int r = e && ranges ? 0 : -ENOMEM;
    for (size_t i = 0; r == 0 && i < ngo;) {
        size_t j = i, n = 0;
        for (; j < ngo && strcmp(go[j].dir, go[i].dir) == 0; j++) {
            go[j].e.expired_at_us = c->now_us;
            e[n++] = go[j].e;
        }
        r = cv_applog_expiry_add(go[i].dir, c->keys, e, n, errbuf, errlen);
        i = j;
    }
    for (size_t i = 0; r == 0 && i < ngo; i++)
        ranges[i] = (cv_offset_range){go[i].e.first_offset, go[i].e.last_offset};
    if (r == 0)
        r = cv_pgretention_rows(conn, p->channel, p->topic, p->partition, ranges, ngo,
                                before_ms, true, &p->rows, &p->versions, errbuf, errlen);
    for (size_t i = 0; r == 0 && i < ngo; i++)
        r = remove_segment(c, &go[i], errbuf, errlen);
    free(e);
    free(ranges);
    return r;
}

static int one_part(const cv_retention_conf *c, PGconn *conn, const cv_hold_list *holds,
                    const part_ref *pr, const char *channel, cv_retention_stats *st,
                    char *errbuf, size_t errlen) {
    const cv_retention_rules *rules = c->rules;
    size_t cls = cv_retention_class_of(rules, channel);
    cv_retention_part p = {
        .topic = pr->topic,
        .channel = channel,
        .cls = rules->classes[cls].name,
        .partition = pr->partition,
        .keep_s = rules->classes[cls].keep_s,
        .first_offset = -1,
        .last_offset = -1,
    };
    for (size_t i = 0; i < holds->n && !p.held_by; i++)
        if (fnmatch(holds->holds[i].channel, channel, 0) == 0)
            p.held_by = holds->holds[i].channel;
    st->partitions++;
    if (p.held_by) {
        st->held++;
        if (c->on_part)
            c->on_part(c->opaque, &p);
        return 0;
    }
    /* What an earlier run recorded and did not finish goes first. */
    cv_applog_expiry_candidate *pend = NULL, *cand = NULL;
    size_t npend = 0, ncand = 0;
    int r =
        cv_applog_expiry_recorded(pr->path, c->keys, true, &pend, &npend, errbuf, errlen);
    /* Message classes only lengthen a channel's retention: a channel kept
     * for good has nothing to read. */
    keep_ctx k = {rules, p.keep_s, 0, c->now_us / 1000};
    k.cutoff_ms = cutoff(k.now_ms, p.keep_s);
    if (r == 0 && p.keep_s != CV_RETENTION_FOREVER) {
        r = cv_applog_expiry_candidates(pr->path, c->keys, keep_record, &k, &cand, &ncand,
                                        errbuf, errlen);
    }
    size_t ngo = 0;
    cv_applog_expiry_candidate *go = NULL;
    if (r == 0 && !(go = calloc(npend + ncand + 1, sizeof(*go))))
        r = -ENOMEM;
    for (size_t i = 0; r == 0 && i < npend; i++) {
        go[ngo++] = pend[i];
        p.pending++;
    }
    for (size_t i = 0; r == 0 && i < ncand; i++) {
        if (cand[i].newest_ms >= k.cutoff_ms)
            continue;
        if (cand[i].keep) {
            p.kept_for_messages++;
            continue;
        }
        go[ngo++] = cand[i];
    }
    for (size_t i = 0; r == 0 && i < ngo; i++) {
        p.segments++;
        p.records += go[i].e.records;
        p.bytes += go[i].e.bytes;
        if (p.first_offset < 0 || go[i].e.first_offset < p.first_offset)
            p.first_offset = go[i].e.first_offset;
        if (go[i].e.last_offset > p.last_offset)
            p.last_offset = go[i].e.last_offset;
    }
    if (r == 0 && !c->apply && ngo) {
        cv_offset_range *ranges = malloc(ngo * sizeof(*ranges));
        if (!ranges)
            r = -ENOMEM;
        for (size_t i = 0; r == 0 && i < ngo; i++)
            ranges[i] = (cv_offset_range){go[i].e.first_offset, go[i].e.last_offset};
        if (r == 0)
            r = cv_pgretention_rows(conn, channel, pr->topic, pr->partition, ranges, ngo,
                                    rows_before(&k), false, &p.rows, &p.versions, errbuf,
                                    errlen);
        free(ranges);
    } else if (r == 0 && ngo) {
        r = apply_part(c, conn, &p, go, ngo, rows_before(&k), errbuf, errlen);
    }
    free(go);
    cv_applog_expiry_candidates_free(pend, npend);
    cv_applog_expiry_candidates_free(cand, ncand);
    if (r < 0)
        return r;
    st->segments += p.segments;
    st->records += p.records;
    st->bytes += p.bytes;
    st->rows += p.rows;
    st->versions += p.versions;
    st->kept_for_messages += p.kept_for_messages;
    st->pending += p.pending;
    if (c->on_part)
        c->on_part(c->opaque, &p);
    return 0;
}

void cv_retention_audit_counts(const cv_retention_stats *st) {
    cv_audit_count("partitions", (int64_t)st->partitions);
    cv_audit_count("held", (int64_t)st->held);
    cv_audit_count("segments", (int64_t)st->segments);
    cv_audit_count("records", (int64_t)st->records);
    cv_audit_count("bytes", (int64_t)st->bytes);
    cv_audit_count("rows", (int64_t)st->rows);
    cv_audit_count("versions", (int64_t)st->versions);
    cv_audit_count("pending", (int64_t)st->pending);
}

int cv_retention_run(const cv_retention_conf *c, cv_retention_stats *st, char *errbuf,
                     size_t errlen) {
    memset(st, 0, sizeof(*st));
    /* One run at a time per log directory (a command beside the broker's
     * schedule): each rewrites the directories' expiry records. */
    char lock_path[4096];
    snprintf(lock_path, sizeof(lock_path), "%s/.retention.lock", c->log_dir);
    int lock = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock < 0 && errno != ENOENT) {
        int e = errno;
        cv_errf(errbuf, errlen, "retention lock %s: %s", lock_path, strerror(e));
        return -e;
    }
    if (lock >= 0 && flock(lock, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        close(lock);
        cv_errf(errbuf, errlen,
                e == EWOULDBLOCK
                    ? "another retention run holds %s (the broker's schedule "
                      "or a chatvault retention apply); try again when it ends"
                    : "retention lock %s: %s",
                lock_path, strerror(e));
        return e == EWOULDBLOCK ? -EBUSY : -e;
    }
    PGconn *conn = cv_pg_connect(c->pg_conninfo, errbuf, errlen);
    if (!conn) {
        if (lock >= 0)
            close(lock);
        return -CV_ESTORE;
    }
    cv_hold_list holds;
    int r = cv_pgretention_holds(conn, &holds, errbuf, errlen);
    if (r < 0) {
        PQfinish(conn);
        if (lock >= 0)
            close(lock);
        return r;
    }
    part_list parts = {0};
    bool *seen = calloc(c->nchannels + 1, sizeof(*seen));
    r = seen ? cv_applog_partitions(c->log_dir, collect_part, &parts, errbuf, errlen)
             : -ENOMEM;
    if (r == -ENOMEM)
        cv_errf(errbuf, errlen, "out of memory");
    for (size_t i = 0; r == 0 && i < parts.n; i++) {
        if (c->stop && atomic_load(c->stop)) {
            cv_errf(errbuf, errlen, "retention run stopped (the broker stops)");
            r = -ECANCELED;
            break;
        }
        const char *channel = cv_envelope_topic_channel(c->env, parts.v[i].topic);
        if (!channel || !selected(c, channel, seen))
            continue;
        if (c->on_progress)
            c->on_progress(c->opaque, i, parts.n, parts.v[i].topic, parts.v[i].partition);
        r = one_part(c, conn, &holds, &parts.v[i], channel, st, errbuf, errlen);
    }
    for (size_t i = 0; r == 0 && i < c->nchannels; i++)
        if (!seen[i]) {
            cv_errf(errbuf, errlen, "channel %s: the log under %s has no partition of it",
                    c->channels[i], c->log_dir);
            r = -ENOENT;
        }
    free(seen);
    if (r == 0 && c->on_progress)
        c->on_progress(c->opaque, parts.n, parts.n, NULL, -1);
    for (size_t i = 0; i < parts.n; i++) {
        free(parts.v[i].path);
        free(parts.v[i].topic);
    }
    free(parts.v);
    cv_pgretention_holds_free(&holds);
    PQfinish(conn);
    if (lock >= 0)
        close(lock); /* and with it the lock */
    return r;
}
