/*
 * envelope — see envelope.h.
 */
#include "ingest/envelope.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "util.h"

static const char *const reason_names[CV_REJECT__COUNT] = {
    [CV_REJECT_NONE] = "none",
    [CV_REJECT_DECODE] = "decode",
    [CV_REJECT_MISSING_FIELD] = "missing_field",
    [CV_REJECT_ID_TOO_LONG] = "id_too_long",
    [CV_REJECT_BAD_CHANNEL] = "bad_channel",
    [CV_REJECT_CHANNEL_MISMATCH] = "channel_mismatch",
    [CV_REJECT_BODY_TOO_LARGE] = "body_too_large",
    [CV_REJECT_BAD_TEXT] = "bad_text",
    [CV_REJECT_BAD_REPLY_TO] = "bad_reply_to",
    [CV_REJECT_BAD_TOPIC] = "bad_topic",
};

const char *cv_reject_reason_name(cv_reject_reason r) {
    return (unsigned)r < CV_REJECT__COUNT ? reason_names[r] : "unknown";
}

static bool channel_char(unsigned char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '_' || c == '-';
}

static bool name_chars(const char *s, size_t len) {
    for (size_t i = 0; i < len; i++)
        if (!channel_char((unsigned char)s[i]))
            return false;
    return true;
}

bool cv_channel_valid(const char *s, size_t len) {
    return len > 0 && len <= CV_CHANNEL_MAX && name_chars(s, len);
}

bool cv_topic_name_valid(const char *s) {
    size_t len = strlen(s);
    /* Kafka's own rule; "." and ".." are reserved. */
    return len > 0 && len <= CV_TOPIC_MAX && strcmp(s, ".") != 0 &&
           strcmp(s, "..") != 0 && name_chars(s, len);
}

const char *cv_envelope_topic_channel(const cv_envelope_rules *rules, const char *topic) {
    size_t n = strlen(rules->topic_prefix);
    if (strncmp(topic, rules->topic_prefix, n) != 0)
        return NULL;
    return topic + n;
}

static int reject(cv_envelope *env, cv_reject_reason r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int reject(cv_envelope *env, cv_reject_reason r, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    env->reason = r;
    vsnprintf(env->error, sizeof(env->error), fmt, ap);
    va_end(ap);
    return -CV_EREJECT;
}

static bool text_ok(const char *s) {
    return !s || cv_utf8_valid(s, strlen(s));
}

/* Reads a varint at *p (bounded by end); false when it does not fit. */
static bool wire_varint(const unsigned char **p, const unsigned char *end,
                        uint64_t *ret) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64 && *p < end; shift += 7) {
        unsigned char b = *(*p)++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *ret = v;
            return true;
        }
    }
    return false;
}

/* The number of the first string field of the encoded ChatMessage that
 * holds a NUL byte (7 for one inside an attribute entry), or 0. protobuf-c
 * hands strings over NUL-terminated, so "a\0b" would silently arrive as
 * "a": another message's id, or a shortened channel. Only called on bytes
 * that decoded. */
static unsigned wire_string_has_nul(const unsigned char *p, const unsigned char *end,
                                    int depth) {
    while (p < end) {
        uint64_t key, n;
        if (!wire_varint(&p, end, &key))
            return 0;
        unsigned field = (unsigned)(key >> 3);
        switch (key & 7) {
        case 0:
            if (!wire_varint(&p, end, &n))
                return 0;
            break;
        case 1:
            if (end - p < 8)
                return 0;
            p += 8;
            break;
        case 5:
            if (end - p < 4)
                return 0;
            p += 4;
            break;
        case 2:
            if (!wire_varint(&p, end, &n) || n > (uint64_t)(end - p))
                return 0;
            if (depth == 0 && field == 7) {
                if (wire_string_has_nul(p, p + n, 1))
                    return 7;
            } else if (depth == 0 ? field == 1 || field == 2 || field == 3 ||
                                        field == 6 || field == 8
                                  : field == 1 || field == 2) {
                if (memchr(p, 0, (size_t)n))
                    return field;
            }
            p += n;
            break;
        default:
            return 0; /* groups: not in this schema */
        }
    }
    return 0;
}

int cv_envelope_decode(const cv_envelope_rules *rules, const char *topic,
                       const void *value, size_t len, cv_arena *arena, cv_envelope *env) {
    env->msg = NULL;
    env->reason = CV_REJECT_NONE;
    env->id_unreadable = false;
    env->error[0] = '\0';

    const char *topic_channel = cv_envelope_topic_channel(rules, topic);
    if (!topic_channel || !cv_channel_valid(topic_channel, strlen(topic_channel)))
        return reject(env, CV_REJECT_BAD_TOPIC,
                      "topic does not name a valid channel (want %s<channel>)",
                      rules->topic_prefix);

    if (!value && len == 0)
        return reject(env, CV_REJECT_DECODE, "empty record value (tombstone)");
    size_t refused = cv_arena_refused(arena);
    Chatvault__V1__ChatMessage *m =
        chatvault__v1__chat_message__unpack(cv_arena_protobuf(arena), len, value);
    if (!m && cv_arena_refused(arena) != refused)
        return -ENOMEM;
    if (!m)
        return reject(env, CV_REJECT_DECODE,
                      "value is not a chatvault.v1.ChatMessage (%zu bytes)", len);
    env->msg = m;
    static const char *const field_names[] = {
        [1] = "message_id",   [2] = "channel",      [3] = "sender_id",
        [6] = "content_type", [7] = "an attribute", [8] = "reply_to"};
    unsigned nul = wire_string_has_nul(value, (const unsigned char *)value + len, 0);
    if (nul) {
        /* A message id cut short at its NUL would name another message. */
        env->id_unreadable = nul == 1;
        return reject(env, CV_REJECT_BAD_TEXT, "%s contains a NUL byte",
                      field_names[nul]);
    }

    size_t idlen = strlen(m->message_id);
    if (idlen == 0)
        return reject(env, CV_REJECT_MISSING_FIELD, "message_id is empty");
    if (idlen > CV_MESSAGE_ID_MAX)
        return reject(env, CV_REJECT_ID_TOO_LONG, "message_id is %zu bytes (at most %d)",
                      idlen, CV_MESSAGE_ID_MAX);
    if (!cv_utf8_valid(m->message_id, idlen))
        return reject(env, CV_REJECT_BAD_TEXT, "message_id is not valid UTF-8");
    size_t chlen = strlen(m->channel);
    if (chlen == 0)
        return reject(env, CV_REJECT_MISSING_FIELD, "channel is empty");
    if (!cv_channel_valid(m->channel, chlen))
        return reject(env, CV_REJECT_BAD_CHANNEL, "channel is not [A-Za-z0-9._-]{1,200}");
    if (strcmp(m->channel, topic_channel) != 0)
        return reject(env, CV_REJECT_CHANNEL_MISMATCH,
                      "channel \"%s\" does not match topic %s", m->channel, topic);
    if (m->body.len > rules->max_body_bytes)
        return reject(env, CV_REJECT_BODY_TOO_LARGE,
                      "body is %zu bytes (limits.max_body_bytes = %zu)", m->body.len,
                      rules->max_body_bytes);
    if (!text_ok(m->sender_id) || !text_ok(m->content_type) || !text_ok(m->reply_to))
        return reject(env, CV_REJECT_BAD_TEXT,
                      "sender_id, content_type or reply_to is not valid UTF-8");
    for (size_t i = 0; i < m->n_attributes; i++)
        if (!text_ok(m->attributes[i]->key) || !text_ok(m->attributes[i]->value))
            return reject(env, CV_REJECT_BAD_TEXT, "attribute %zu is not valid UTF-8", i);
    if (m->reply_to && *m->reply_to) {
        const char *r = m->reply_to;
        if (!cv_topic_name_valid(r))
            return reject(env, CV_REJECT_BAD_REPLY_TO,
                          "reply_to is not a valid topic name");
        /* Acks may not be written into a chat topic or the DLQ: that would
         * let one channel write into another. Nor into Kafka's own topics
         * ("__consumer_offsets", "__transaction_state"): Kafka refuses the
         * write, and an ack retried forever holds its batch's offsets. */
        if (cv_envelope_topic_channel(rules, r) || strcmp(r, rules->dlq_topic) == 0 ||
            strncmp(r, "__", 2) == 0)
            return reject(env, CV_REJECT_BAD_REPLY_TO,
                          "reply_to \"%s\" names a chat, dead-letter or Kafka-internal "
                          "topic",
                          r);
    }
    return 0;
}

const char *cv_envelope_message_id(const cv_envelope *env) {
    const Chatvault__V1__ChatMessage *m = env->msg;
    if (!m || !m->message_id || env->id_unreadable)
        return NULL;
    size_t n = strlen(m->message_id);
    return n > 0 && n <= CV_MESSAGE_ID_MAX && cv_utf8_valid(m->message_id, n)
               ? m->message_id
               : NULL;
}
