/*
 * searchfmt — search results, their pages, cursors and forms (searchfmt.h).
 */
#include "searchfmt.h"

#include <errno.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void cv_search_hit_release(cv_search_hit *h) {
    free(h->channel);
    free(h->message_id);
    free(h->sender_id);
    free(h->topic);
    free(h->content_type);
    free(h->excerpt);
    memset(h, 0, sizeof(*h));
}

int cv_search_hit_set(cv_search_hit *h, const char *channel, const char *id,
                      const char *sender, const char *topic, const char *content_type,
                      const char *excerpt) {
    h->channel = strdup(channel);
    h->message_id = strdup(id);
    h->sender_id = strdup(sender);
    h->topic = strdup(topic);
    h->content_type = strdup(content_type);
    h->excerpt = excerpt ? strdup(excerpt) : NULL;
    if (!h->channel || !h->message_id || !h->sender_id || !h->topic || !h->content_type ||
        (excerpt && !h->excerpt))
        return -ENOMEM;
    return 0;
}

int cv_search_key_cmp(int64_t at_a, const char *ch_a, const char *id_a, int64_t at_b,
                      const char *ch_b, const char *id_b) {
    if (at_a != at_b)
        return at_a < at_b ? -1 : 1;
    int c = strcmp(ch_a, ch_b);
    return c ? c : strcmp(id_a, id_b);
}

int cv_search_page_init(cv_search_page *p, size_t cap) {
    memset(p, 0, sizeof(*p));
    if (!(p->h = calloc(cap ? cap : 1, sizeof(*p->h))))
        return -ENOMEM;
    p->cap = cap;
    return 0;
}

void cv_search_page_release(cv_search_page *p) {
    for (size_t i = 0; i < p->n; i++)
        cv_search_hit_release(&p->h[i]);
    cv_search_hit_release(&p->last);
    free(p->h);
    memset(p, 0, sizeof(*p));
}

int cv_search_page_pg(PGconn *conn, cv_pgsearch_query *q, cv_search_page *p, char *errbuf,
                      size_t errlen) {
    q->limit = (int)p->cap;
    cv_pgsearch_result res;
    int r = cv_pgsearch_run(conn, q, &res, errbuf, errlen);
    if (r < 0)
        return r;
    for (size_t i = 0; i < res.n && p->n < p->cap && r == 0; i++) {
        const cv_pgsearch_hit *s = &res.hits[i];
        cv_search_hit *h = &p->h[p->n++];
        r = cv_search_hit_set(h, s->channel, s->message_id, s->sender_id, s->topic,
                              s->content_type, s->excerpt);
        h->partition = s->partition;
        h->offset = s->offset;
        h->sent_at_us = s->sent_at_us;
        h->body_len = s->body_len;
        h->revision = s->revision;
        h->deleted = s->deleted;
        h->pg = 1;
        h->log = -1;
    }
    p->full = res.page_rows == p->cap && res.has_last;
    if (r == 0 && p->full) {
        p->last.sent_at_us = res.last_sent_at_us;
        if (!(p->last.channel = strdup(res.last_channel)) ||
            !(p->last.message_id = strdup(res.last_message_id)))
            r = -ENOMEM;
    }
    cv_pgsearch_result_free(&res);
    if (r < 0)
        snprintf(errbuf, errlen, "out of memory");
    return r;
}

int cv_search_cursor_encode(const cv_search_hit *last, char *out, size_t len) {
    char raw[CV_SEARCH_CURSOR_MAX];
    int n = snprintf(raw, sizeof(raw), "%" PRId64 "\n%s\n%s", last->sent_at_us,
                     last->channel, last->message_id);
    if (n < 0 || (size_t)n >= sizeof(raw) ||
        sodium_base64_ENCODED_LEN((size_t)n, sodium_base64_VARIANT_URLSAFE_NO_PADDING) >
            len)
        return -ENOBUFS;
    sodium_bin2base64(out, len, (const unsigned char *)raw, (size_t)n,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    return 0;
}

int cv_search_cursor_decode(const char *s, cv_search_cursor *c) {
    unsigned char raw[CV_SEARCH_CURSOR_MAX];
    size_t n = 0;
    if (sodium_base642bin(raw, sizeof(raw) - 1, s, strlen(s), NULL, &n, NULL,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0)
        return -EINVAL;
    raw[n] = '\0';
    char *a = (char *)raw, *b = strchr(a, '\n'), *d = b ? strchr(b + 1, '\n') : NULL;
    if (!b || !d)
        return -EINVAL;
    *b++ = '\0';
    *d++ = '\0';
    char *end;
    errno = 0;
    long long v = strtoll(a, &end, 10);
    if (errno || end == a || *end || strlen(b) >= sizeof(c->channel) ||
        strlen(d) >= sizeof(c->message_id))
        return -EINVAL;
    c->set = true;
    c->sent_at_us = v;
    snprintf(c->channel, sizeof(c->channel), "%s", b);
    snprintf(c->message_id, sizeof(c->message_id), "%s", d);
    return 0;
}

void cv_search_time(int64_t us, char *buf, size_t len) {
    time_t s = (time_t)(us / 1000000);
    if (us < 0 && us % 1000000)
        s--;
    struct tm tm;
    gmtime_r(&s, &tm);
    char t[32];
    strftime(t, sizeof(t), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, len, "%s.%03dZ", t, (int)(((us % 1000000) + 1000000) % 1000000 / 1000));
}

static const char *json_presence(int v) {
    return v < 0 ? "null" : v ? "true" : "false";
}

int cv_search_hit_json(cv_buf *b, const cv_search_hit *h) {
    char t[48];
    cv_search_time(h->sent_at_us, t, sizeof(t));
    int r =
        cv_buf_printf(b, "{\"sent_at\":\"%s\",\"sent_at_us\":%" PRId64 ",\"channel\":", t,
                      h->sent_at_us);
    const char *keys[] = {NULL, ",\"sender_id\":", ",\"message_id\":", ",\"topic\":"};
    const char *vals[] = {h->channel, h->sender_id, h->message_id, h->topic};
    for (size_t i = 0; i < 4 && r == 0; i++) {
        if (keys[i])
            r = cv_buf_printf(b, "%s", keys[i]);
        if (r == 0)
            r = cv_buf_json_string(b, vals[i], strlen(vals[i]));
    }
    if (r == 0)
        r = cv_buf_printf(
            b, ",\"partition\":%" PRId32 ",\"offset\":%" PRId64 ",\"content_type\":",
            h->partition, h->offset);
    if (r == 0)
        r = cv_buf_json_string(b, h->content_type, strlen(h->content_type));
    if (r == 0)
        r = cv_buf_printf(b, ",\"body_bytes\":%" PRId64 ",\"excerpt\":", h->body_len);
    if (r == 0)
        r = h->excerpt ? cv_buf_json_string(b, h->excerpt, strlen(h->excerpt))
                       : cv_buf_append(b, "null", 4);
    /* Versions: only when set, so results of originals read as before. */
    if (r == 0 && h->revision)
        r = cv_buf_printf(b, ",\"revision\":%" PRIu32, h->revision);
    if (r == 0 && h->deleted)
        r = cv_buf_printf(b, ",\"deleted\":true");
    if (r == 0)
        r = cv_buf_printf(b, ",\"stores\":{\"postgres\":%s,\"log\":%s}}",
                          json_presence(h->pg), json_presence(h->log));
    return r;
}

/* The excerpt with each "**word**" of ts_headline as <mark>word</mark>. */
static int html_excerpt(cv_buf *b, const char *s) {
    bool open = false;
    int r = 0;
    while (r == 0 && *s) {
        const char *m = strstr(s, "**");
        size_t n = m ? (size_t)(m - s) : strlen(s);
        char *part = strndup(s, n);
        r = part ? cv_buf_html(b, part) : -ENOMEM;
        free(part);
        if (!m || r)
            break;
        r = cv_buf_printf(b, open ? "</mark>" : "<mark>");
        open = !open;
        s = m + 2;
    }
    return r == 0 && open ? cv_buf_printf(b, "</mark>") : r;
}

int cv_search_hit_html(cv_buf *b, const cv_search_hit *h) {
    char t[48];
    cv_search_time(h->sent_at_us, t, sizeof(t));
    int r = cv_buf_printf(b, "<tr><td class=\"time\">%s</td>", t);
    const char *cells[] = {h->channel, h->sender_id, h->message_id};
    for (size_t i = 0; i < 3 && r == 0; i++) {
        r = cv_buf_printf(b, "<td>");
        r = r ? r : cv_buf_html(b, cells[i]);
        r = r ? r : cv_buf_printf(b, "</td>");
    }
    r = r ? r : cv_buf_printf(b, "<td>");
    r = r ? r : cv_buf_html(b, h->topic);
    r = r ? r
          : cv_buf_printf(b, "/%" PRId32 "@%" PRId64 "</td><td class=\"body\">",
                          h->partition, h->offset);
    /* Versions: a tombstone says so instead of a body, an edit names its
     * revision before it. */
    if (r == 0 && h->deleted)
        return cv_buf_printf(b, "<i>(deleted, revision %" PRIu32 ")</i></td></tr>\n",
                             h->revision);
    if (r == 0 && h->revision)
        r = cv_buf_printf(b, "<i>(edited, revision %" PRIu32 ")</i> ", h->revision);
    if (r == 0 && h->excerpt)
        r = html_excerpt(b, h->excerpt);
    else if (r == 0) {
        r = cv_buf_printf(b, "<i>(%" PRId64 " bytes of ", h->body_len);
        r = r ? r
              : cv_buf_html(b, *h->content_type ? h->content_type : "no content type");
        r = r ? r : cv_buf_printf(b, ")</i>");
    }
    return r ? r : cv_buf_printf(b, "</td></tr>\n");
}
