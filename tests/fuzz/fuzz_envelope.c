/*
 * fuzz_envelope — libFuzzer target for the envelope decoder and validator.
 *
 * Every input is decoded as the value of a record read from several topics
 * (a plain channel, a 200-character channel, a topic without the prefix), and
 * whatever the decoder accepts is checked against the contract it promises:
 * a valid record has an id of 1..128 bytes of UTF-8, a channel equal to the
 * topic's, a body within the limit and UTF-8 text fields; a rejected record
 * has a named reason and a one-line error. The decoded fields are then
 * escaped as `chatvault log cat` prints them, so that path sees hostile
 * strings too. Build with -Dfuzz=true (clang); run tests/fuzz/run.sh.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "ingest/envelope.h"
#include "util.h"

#define BODY_LIMIT 4096

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const cv_envelope_rules rules = {
    .topic_prefix = "chat.",
    .max_body_bytes = BODY_LIMIT,
    .ack_topic = "chatvault.acks",
    .dlq_topic = "chatvault.dlq",
};

static cv_arena *arena;
static char long_topic[5 + CV_CHANNEL_MAX + 1];

static void check(int cond) {
    if (!cond)
        abort();
}

static void check_text(const char *s) {
    check(s != NULL);
    check(cv_utf8_valid(s, strlen(s)));
}

/* What `log cat` does with the fields: JSON-escape them into a bounded
 * buffer; the result must be valid UTF-8 with no raw control bytes. */
static void escape(const char *s, size_t len) {
    cv_buf b;
    cv_buf_init(&b, 1 << 20);
    int r = cv_buf_json_string(&b, s, len);
    if (r == 0) {
        check(b.len >= 2 && b.data[0] == '"' && b.data[b.len - 1] == '"');
        check(cv_utf8_valid((const char *)b.data, b.len));
        for (size_t i = 0; i < b.len; i++)
            check(b.data[i] >= 0x20);
    } else {
        check(r == -ENOBUFS);
    }
    cv_buf_release(&b);
}

static void check_valid(const Chatvault__V1__ChatMessage *m, const char *topic) {
    size_t idlen = strlen(m->message_id);
    check(idlen >= 1 && idlen <= CV_MESSAGE_ID_MAX);
    check_text(m->message_id);
    check(strcmp(m->channel, topic + strlen(rules.topic_prefix)) == 0);
    check(cv_channel_valid(m->channel, strlen(m->channel)));
    check(m->body.len <= BODY_LIMIT);
    check_text(m->sender_id);
    check_text(m->content_type);
    check_text(m->reply_to);
    for (size_t i = 0; i < m->n_attributes; i++) {
        check_text(m->attributes[i]->key);
        check_text(m->attributes[i]->value);
    }
    if (*m->reply_to) {
        check(cv_topic_name_valid(m->reply_to));
        check(strncmp(m->reply_to, rules.topic_prefix, strlen(rules.topic_prefix)) != 0);
        check(strcmp(m->reply_to, rules.dlq_topic) != 0);
    }
    /* The acker re-encodes fields of valid messages: packing must work. */
    size_t n = chatvault__v1__chat_message__get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    check(buf != NULL);
    check(chatvault__v1__chat_message__pack(m, buf) == n);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!arena) {
        arena = cv_arena_new((size_t)64 << 20);
        check(arena != NULL);
        memcpy(long_topic, "chat.", 5);
        memset(long_topic + 5, 'x', CV_CHANNEL_MAX);
    }
    const char *topics[] = {"chat.general", "chat.x", long_topic, "general"};
    for (size_t t = 0; t < sizeof(topics) / sizeof(topics[0]); t++) {
        cv_envelope env;
        cv_arena_reset(arena);
        int r = cv_envelope_decode(&rules, topics[t], data, size, arena, &env);
        check(r == 0 || r == -CV_EREJECT || r == -ENOMEM);
        if (r == 0) {
            check(env.reason == CV_REJECT_NONE && env.msg != NULL);
            check_valid(env.msg, topics[t]);
        } else if (r == -CV_EREJECT) {
            check(env.reason > CV_REJECT_NONE && env.reason < CV_REJECT__COUNT);
            check(env.error[0] != '\0');
            check(memchr(env.error, '\0', sizeof(env.error)) != NULL);
            check(strchr(env.error, '\n') == NULL);
            if (t == 3)
                check(env.reason == CV_REJECT_BAD_TOPIC);
        }
        if (env.msg) {
            const Chatvault__V1__ChatMessage *m = env.msg;
            escape(m->message_id, strlen(m->message_id));
            escape(m->channel, strlen(m->channel));
            escape(m->sender_id, strlen(m->sender_id));
            escape((const char *)m->body.data, m->body.len);
        }
        escape(env.error, strlen(env.error));
    }
    return 0;
}
