/*
 * Unit tests of consumer/ingest/envelope.c (decode + validate, with the exact reject
 * reason for each rule and the boundaries of every size limit),
 * consumer/arena.c (bound, reset, alignment) and the consumer/util.c helpers
 * the envelope and the log printer rely on (UTF-8 validation, JSON string
 * escaping).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "chatvault.pb-c.h"
#include "ingest/envelope.h"
#include "tap.h"
#include "util.h"

#define BODY_LIMIT 1024

static const cv_envelope_rules rules = {
    .topic_prefix = "chat.",
    .max_body_bytes = BODY_LIMIT,
    .ack_topic = "chatvault.acks",
    .dlq_topic = "chatvault.dlq",
};

static cv_arena *arena;

/* A valid message for topic chat.general; tests change one field. */
static Chatvault__V1__ChatMessage base_message(void) {
    Chatvault__V1__ChatMessage m = CHATVAULT__V1__CHAT_MESSAGE__INIT;
    m.message_id = "m-0001";
    m.channel = "general";
    m.sender_id = "alice";
    m.sent_at_us = INT64_C(1700000000000000);
    m.body.data = (uint8_t *)"hello";
    m.body.len = 5;
    m.content_type = "text/plain";
    return m;
}

/* Packs `m`; the caller frees the result. */
static uint8_t *pack(const Chatvault__V1__ChatMessage *m, size_t *ret_len) {
    size_t n = chatvault__v1__chat_message__get_packed_size(m);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) {
        printf("Bail out! out of memory\n");
        exit(1);
    }
    *ret_len = chatvault__v1__chat_message__pack(m, buf);
    return buf;
}

/* Decodes `m` packed, as read from `topic`; returns the decode result and
 * fills `env`. */
static int decode_msg(const Chatvault__V1__ChatMessage *m, const char *topic,
                      cv_envelope *env) {
    size_t len;
    uint8_t *buf = pack(m, &len);
    cv_arena_reset(arena);
    int r = cv_envelope_decode(&rules, topic, buf, len, arena, env);
    free(buf);
    return r;
}

/* Asserts that `m` on `topic` is rejected with reason `want`. */
static void expect_reject(const Chatvault__V1__ChatMessage *m, const char *topic,
                          cv_reject_reason want, const char *name) {
    cv_envelope env;
    int r = decode_msg(m, topic, &env);
    tap_ok(r == -CV_EREJECT && env.reason == want && env.error[0] != '\0',
           "%s: rejected as %s", name, cv_reject_reason_name(want));
    if (r != -CV_EREJECT || env.reason != want)
        printf("#   got r=%d reason=%s error=\"%s\"\n", r,
               cv_reject_reason_name(env.reason), env.error);
}

static void expect_valid(const Chatvault__V1__ChatMessage *m, const char *topic,
                         const char *name) {
    cv_envelope env;
    int r = decode_msg(m, topic, &env);
    tap_ok(r == 0 && env.reason == CV_REJECT_NONE && env.msg != NULL, "%s: valid", name);
    if (r != 0)
        printf("#   got r=%d reason=%s error=\"%s\"\n", r,
               cv_reject_reason_name(env.reason), env.error);
}

static char *repeat(char c, size_t n) {
    char *s = malloc(n + 1);
    if (!s) {
        printf("Bail out! out of memory\n");
        exit(1);
    }
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

static void test_reason_names(void) {
    static const char *const want[] = {
        "none",         "decode",           "missing_field",  "id_too_long",
        "bad_channel",  "channel_mismatch", "body_too_large", "bad_text",
        "bad_reply_to", "bad_topic",
    };
    int ok = (int)(sizeof(want) / sizeof(want[0])) == CV_REJECT__COUNT;
    for (int i = 0; ok && i < CV_REJECT__COUNT; i++)
        ok = strcmp(cv_reject_reason_name((cv_reject_reason)i), want[i]) == 0;
    tap_ok(ok, "reject reason names are the stable metric labels");
    TAP_IS_STR(cv_reject_reason_name(CV_REJECT__COUNT), "unknown",
               "reason name past the end is \"unknown\"");
}

static void test_valid(void) {
    Chatvault__V1__ChatMessage m = base_message();
    Chatvault__V1__ChatMessage__AttributesEntry e1 =
        CHATVAULT__V1__CHAT_MESSAGE__ATTRIBUTES_ENTRY__INIT;
    Chatvault__V1__ChatMessage__AttributesEntry e2 =
        CHATVAULT__V1__CHAT_MESSAGE__ATTRIBUTES_ENTRY__INIT;
    e1.key = "lang", e1.value = "fr";
    e2.key = "émoji", e2.value = "\xf0\x9f\x98\x80";
    Chatvault__V1__ChatMessage__AttributesEntry *attrs[] = {&e1, &e2};
    m.attributes = attrs;
    m.n_attributes = 2;
    m.reply_to = "team.acks";

    cv_envelope env;
    int r = decode_msg(&m, "chat.general", &env);
    TAP_IS_INT(r, 0, "valid message decodes");
    tap_ok(env.msg && strcmp(env.msg->message_id, "m-0001") == 0 &&
               strcmp(env.msg->channel, "general") == 0 &&
               strcmp(env.msg->sender_id, "alice") == 0 &&
               env.msg->sent_at_us == INT64_C(1700000000000000) &&
               env.msg->body.len == 5 && memcmp(env.msg->body.data, "hello", 5) == 0 &&
               env.msg->n_attributes == 2 && strcmp(env.msg->reply_to, "team.acks") == 0,
           "valid message: fields round-trip");
    TAP_IS_INT(env.reason, CV_REJECT_NONE, "valid message: reason none");
    TAP_IS_STR(env.error, "", "valid message: error empty");

    Chatvault__V1__ChatMessage min = CHATVAULT__V1__CHAT_MESSAGE__INIT;
    min.message_id = "x";
    min.channel = "c";
    expect_valid(&min, "chat.c", "only the required fields");

    m = base_message();
    m.reply_to = "chatvault.acks";
    expect_valid(&m, "chat.general", "reply_to naming the ack topic");

    m = base_message();
    m.channel = "Team_1.ops-EU";
    expect_valid(&m, "chat.Team_1.ops-EU", "channel using every allowed class");

    m = base_message();
    m.body.data = NULL;
    m.body.len = 0;
    expect_valid(&m, "chat.general", "empty body");

    TAP_IS_STR(cv_envelope_topic_channel(&rules, "chat.a.b"), "a.b",
               "topic_channel: the rest after the prefix");
    tap_ok(cv_envelope_topic_channel(&rules, "chatter") == NULL,
           "topic_channel: NULL without the prefix");
}

static void test_rejects(void) {
    cv_envelope env;
    Chatvault__V1__ChatMessage m;

    static const unsigned char garbage[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
    cv_arena_reset(arena);
    int r =
        cv_envelope_decode(&rules, "chat.general", garbage, sizeof(garbage), arena, &env);
    tap_ok(r == -CV_EREJECT && env.reason == CV_REJECT_DECODE && env.msg == NULL,
           "garbage bytes: rejected as decode, no message");

    /* Field 1 (message_id, length-delimited) claiming 100 bytes, holding 3. */
    static const unsigned char truncated[] = {0x0a, 100, 'a', 'b', 'c'};
    r = cv_envelope_decode(&rules, "chat.general", truncated, sizeof(truncated), arena,
                           &env);
    tap_ok(r == -CV_EREJECT && env.reason == CV_REJECT_DECODE,
           "length past the end: rejected as decode");

    r = cv_envelope_decode(&rules, "chat.general", NULL, 0, arena, &env);
    tap_ok(r == -CV_EREJECT && env.reason == CV_REJECT_DECODE,
           "tombstone (NULL value): rejected as decode");

    r = cv_envelope_decode(&rules, "chat.general", "", 0, arena, &env);
    tap_ok(r == -CV_EREJECT && env.reason == CV_REJECT_MISSING_FIELD && env.msg != NULL,
           "zero-length value: decodes to an empty message, missing_field");

    m = base_message();
    m.message_id = "";
    expect_reject(&m, "chat.general", CV_REJECT_MISSING_FIELD, "empty message_id");

    m = base_message();
    m.channel = "";
    expect_reject(&m, "chat.general", CV_REJECT_MISSING_FIELD, "empty channel");

    char *id129 = repeat('i', 129);
    m = base_message();
    m.message_id = id129;
    expect_reject(&m, "chat.general", CV_REJECT_ID_TOO_LONG, "message_id of 129 bytes");
    r = decode_msg(&m, "chat.general", &env);
    tap_ok(env.msg && strlen(env.msg->message_id) == 129,
           "id_too_long: the decoded message is still readable");
    free(id129);

    m = base_message();
    m.message_id = "bad\xc3";
    expect_reject(&m, "chat.general", CV_REJECT_BAD_TEXT, "message_id not UTF-8");

    static const char *const bad_channels[] = {"gen eral", "gen/eral", "génér",
                                               "a\tb",     "x:y",      "a+b"};
    for (size_t i = 0; i < sizeof(bad_channels) / sizeof(bad_channels[0]); i++) {
        char name[64];
        m = base_message();
        m.channel = (char *)bad_channels[i];
        snprintf(name, sizeof(name), "channel with a bad character (#%zu)", i);
        expect_reject(&m, "chat.general", CV_REJECT_BAD_CHANNEL, name);
    }

    char *ch201 = repeat('c', 201);
    m = base_message();
    m.channel = ch201;
    expect_reject(&m, "chat.general", CV_REJECT_BAD_CHANNEL, "channel of 201 chars");
    free(ch201);

    m = base_message();
    m.channel = "random";
    expect_reject(&m, "chat.general", CV_REJECT_CHANNEL_MISMATCH,
                  "channel differs from the topic's");
    m.channel = "General";
    expect_reject(&m, "chat.general", CV_REJECT_CHANNEL_MISMATCH,
                  "channel differs only in case");
    m.channel = "gen";
    expect_reject(&m, "chat.general", CV_REJECT_CHANNEL_MISMATCH,
                  "channel is a prefix of the topic's");
    m.channel = "general.x";
    expect_reject(&m, "chat.general", CV_REJECT_CHANNEL_MISMATCH,
                  "topic's channel is a prefix of the message's");

    char *big = repeat('b', BODY_LIMIT + 1);
    m = base_message();
    m.body.data = (uint8_t *)big;
    m.body.len = BODY_LIMIT + 1;
    expect_reject(&m, "chat.general", CV_REJECT_BODY_TOO_LARGE,
                  "body one over the limit");
    free(big);

    m = base_message();
    m.sender_id = "al\xffice";
    expect_reject(&m, "chat.general", CV_REJECT_BAD_TEXT, "sender_id not UTF-8");
    m = base_message();
    m.content_type = "text/\xc0\xaf";
    expect_reject(&m, "chat.general", CV_REJECT_BAD_TEXT,
                  "content_type with an overlong sequence");

    Chatvault__V1__ChatMessage__AttributesEntry e =
        CHATVAULT__V1__CHAT_MESSAGE__ATTRIBUTES_ENTRY__INIT;
    Chatvault__V1__ChatMessage__AttributesEntry *attrs[] = {&e};
    e.key = "k";
    e.value = "\xed\xa0\x80"; /* U+D800, a surrogate */
    m = base_message();
    m.attributes = attrs;
    m.n_attributes = 1;
    expect_reject(&m, "chat.general", CV_REJECT_BAD_TEXT, "attribute value not UTF-8");
    e.key = "\x80";
    e.value = "v";
    expect_reject(&m, "chat.general", CV_REJECT_BAD_TEXT, "attribute key not UTF-8");

    m = base_message();
    m.reply_to = "chat.other";
    expect_reject(&m, "chat.general", CV_REJECT_BAD_REPLY_TO,
                  "reply_to naming another chat topic");
    m.reply_to = "chat.general";
    expect_reject(&m, "chat.general", CV_REJECT_BAD_REPLY_TO,
                  "reply_to naming its own chat topic");
    m.reply_to = "chatvault.dlq";
    expect_reject(&m, "chat.general", CV_REJECT_BAD_REPLY_TO, "reply_to naming the DLQ");
    m.reply_to = "__consumer_offsets";
    expect_reject(&m, "chat.general", CV_REJECT_BAD_REPLY_TO,
                  "reply_to naming Kafka's offsets topic");
    m.reply_to = "__transaction_state";
    expect_reject(&m, "chat.general", CV_REJECT_BAD_REPLY_TO,
                  "reply_to naming Kafka's transaction log");
    m.reply_to = "_single_underscore";
    expect_valid(&m, "chat.general", "reply_to with one leading underscore");
    m.reply_to = "acks for me";
    expect_reject(&m, "chat.general", CV_REJECT_BAD_REPLY_TO,
                  "reply_to not a valid topic name");
    m.reply_to = "..";
    expect_reject(&m, "chat.general", CV_REJECT_BAD_REPLY_TO, "reply_to \"..\"");
    char *long_topic = repeat('t', CV_TOPIC_MAX + 1);
    m.reply_to = long_topic;
    expect_reject(&m, "chat.general", CV_REJECT_BAD_REPLY_TO, "reply_to of 250 chars");
    free(long_topic);

    m = base_message();
    expect_reject(&m, "general", CV_REJECT_BAD_TOPIC, "topic without the prefix");
    expect_reject(&m, "chat.", CV_REJECT_BAD_TOPIC, "topic that is only the prefix");
    expect_reject(&m, "chat.gen eral", CV_REJECT_BAD_TOPIC,
                  "topic whose channel has a bad character");
    expect_reject(&m, "chatvault.acks", CV_REJECT_BAD_TOPIC, "the ack topic as input");
    /* The topic is checked before the bytes: even garbage gets bad_topic. */
    r = cv_envelope_decode(&rules, "other", garbage, sizeof(garbage), arena, &env);
    tap_ok(r == -CV_EREJECT && env.reason == CV_REJECT_BAD_TOPIC,
           "bad topic is reported before a decode failure");
}

/* Appends a length-delimited field (tag `field`, wire type 2) to buf. */
static size_t put_field(unsigned char *buf, size_t at, unsigned field, const void *data,
                        size_t len) {
    buf[at++] = (unsigned char)(field << 3 | 2);
    buf[at++] = (unsigned char)len; /* the tests keep len < 128 */
    memcpy(buf + at, data, len);
    return at + len;
}

/* protobuf-c hands strings over NUL-terminated: a NUL inside a string field
 * would silently shorten it (an id "a\0b" stored as "a"). Built by hand,
 * since protobuf-c cannot encode such a string. */
static void test_embedded_nul(void) {
    static const struct {
        unsigned field;
        const char *value;
        size_t len;
        const char *name;
    } cases[] = {
        {1, "m\0-1", 4, "message_id"},
        {3, "al\0ice", 6, "sender_id"},
        {6, "text\0", 5, "content_type"},
        {8, "acks\0", 5, "reply_to"},
    };
    unsigned char buf[256], entry[64];
    cv_envelope env;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t n = 0;
        if (cases[i].field != 1)
            n = put_field(buf, n, 1, "m-1", 3);
        n = put_field(buf, n, cases[i].field, cases[i].value, cases[i].len);
        n = put_field(buf, n, 2, "general", 7);
        cv_arena_reset(arena);
        int r = cv_envelope_decode(&rules, "chat.general", buf, n, arena, &env);
        tap_ok(r == -CV_EREJECT && env.reason == CV_REJECT_BAD_TEXT,
               "NUL inside %s: rejected as bad_text", cases[i].name);
    }

    size_t n = put_field(buf, 0, 1, "m-1", 3);
    n = put_field(buf, n, 2, "gene\0ral", 8);
    cv_arena_reset(arena);
    int r = cv_envelope_decode(&rules, "chat.gene", buf, n, arena, &env);
    tap_ok(r == -CV_EREJECT && env.reason == CV_REJECT_BAD_TEXT,
           "NUL inside channel: rejected, not read as a shorter channel");

    size_t e = put_field(entry, 0, 1, "k", 1);
    e = put_field(entry, e, 2, "v\0w", 3);
    n = put_field(buf, 0, 1, "m-1", 3);
    n = put_field(buf, n, 2, "general", 7);
    n = put_field(buf, n, 7, entry, e);
    cv_arena_reset(arena);
    r = cv_envelope_decode(&rules, "chat.general", buf, n, arena, &env);
    tap_ok(r == -CV_EREJECT && env.reason == CV_REJECT_BAD_TEXT,
           "NUL inside an attribute value: rejected as bad_text");

    n = put_field(buf, 0, 1, "m-1", 3);
    n = put_field(buf, n, 2, "general", 7);
    n = put_field(buf, n, 5, "\0\0b\0", 4);
    buf[n++] = 4 << 3; /* sent_at_us = 0 */
    buf[n++] = 0;
    cv_arena_reset(arena);
    r = cv_envelope_decode(&rules, "chat.general", buf, n, arena, &env);
    tap_ok(r == 0 && env.msg && env.msg->body.len == 4,
           "NUL bytes inside the body (bytes, not text): valid");
}

static void test_boundaries(void) {
    Chatvault__V1__ChatMessage m;
    char *id128 = repeat('i', CV_MESSAGE_ID_MAX);
    m = base_message();
    m.message_id = id128;
    expect_valid(&m, "chat.general", "message_id of exactly 128 bytes");
    free(id128);

    /* 128 bytes of multi-byte UTF-8 (64 x U+00E9). */
    char id_utf8[CV_MESSAGE_ID_MAX + 1];
    for (int i = 0; i < CV_MESSAGE_ID_MAX; i += 2)
        id_utf8[i] = (char)0xc3, id_utf8[i + 1] = (char)0xa9;
    id_utf8[CV_MESSAGE_ID_MAX] = '\0';
    m = base_message();
    m.message_id = id_utf8;
    expect_valid(&m, "chat.general", "message_id of 128 bytes of UTF-8");

    char *body = repeat('b', BODY_LIMIT);
    m = base_message();
    m.body.data = (uint8_t *)body;
    m.body.len = BODY_LIMIT;
    expect_valid(&m, "chat.general", "body exactly at the limit");
    free(body);

    char *ch200 = repeat('c', CV_CHANNEL_MAX);
    char topic[CV_CHANNEL_MAX + 8];
    snprintf(topic, sizeof(topic), "chat.%s", ch200);
    m = base_message();
    m.channel = ch200;
    expect_valid(&m, topic, "channel of exactly 200 chars");
    free(ch200);

    char *ch201 = repeat('c', CV_CHANNEL_MAX + 1);
    snprintf(topic, sizeof(topic), "chat.%s", ch201);
    m = base_message();
    m.channel = ch201;
    expect_reject(&m, topic, CV_REJECT_BAD_TOPIC, "topic naming a 201-char channel");
    free(ch201);

    char *rt = repeat('t', CV_TOPIC_MAX);
    m = base_message();
    m.reply_to = rt;
    expect_valid(&m, "chat.general", "reply_to of exactly 249 chars");
    free(rt);

    tap_ok(cv_channel_valid("a", 1) && !cv_channel_valid("", 0) &&
               !cv_channel_valid("a\0b", 3),
           "cv_channel_valid: one char ok, empty and embedded NUL refused");
    tap_ok(cv_topic_name_valid("...") && !cv_topic_name_valid(".") &&
               !cv_topic_name_valid("") && !cv_topic_name_valid("a/b"),
           "cv_topic_name_valid: \".\" and \"\" reserved, \"...\" allowed");
}

static void test_arena(void) {
    cv_arena *a = cv_arena_new(2u << 20);
    tap_ok(a != NULL, "arena: new");
    void *p1 = cv_arena_alloc(a, 1);
    void *p2 = cv_arena_alloc(a, 17);
    void *p3 = cv_arena_alloc(a, 0);
    tap_ok(p1 && p2 && p3 && ((uintptr_t)p1 & 15) == 0 && ((uintptr_t)p2 & 15) == 0 &&
               ((uintptr_t)p3 & 15) == 0,
           "arena: allocations are 16-byte aligned");
    tap_ok((char *)p2 - (char *)p1 >= 16 && (char *)p3 - (char *)p2 >= 32,
           "arena: allocations do not overlap");
    memset(p2, 0xab, 17);
    /* While the current chunk has room: a size that wraps when rounded up
     * must not become a small allocation. */
    tap_ok(cv_arena_alloc(a, SIZE_MAX) == NULL, "arena: NULL for SIZE_MAX");
    tap_ok(cv_arena_alloc(a, SIZE_MAX - 8) == NULL,
           "arena: NULL for a size that overflows when rounded");

    void *big = cv_arena_alloc(a, 1u << 20);
    tap_ok(big != NULL, "arena: a second chunk within the limit");
    tap_ok(cv_arena_alloc(a, 1u << 20) == NULL, "arena: NULL past the limit");

    cv_arena_reset(a);
    void *q1 = cv_arena_alloc(a, 1);
    tap_ok(q1 == p1, "arena: reset reuses the first chunk from its start");
    tap_ok(cv_arena_alloc(a, 1u << 20) != NULL,
           "arena: reset gives back the room of the freed chunks");
    cv_arena_reset(a);

    ProtobufCAllocator *pa = cv_arena_protobuf(a);
    void *x = pa->alloc(pa->allocator_data, 40);
    tap_ok(x != NULL, "arena: protobuf allocator draws from the arena");
    pa->free(pa->allocator_data, x);
    cv_arena_free(a);
    tap_ok(cv_arena_free(NULL) == NULL, "arena: free(NULL) returns NULL");

    /* A decode that needs more than the arena's bound reports -ENOMEM, not a
     * reject: the record itself may be fine. */
    cv_arena *tiny = cv_arena_new(1u << 20);
    char *body = repeat('b', 1u << 20);
    cv_envelope_rules wide = rules;
    wide.max_body_bytes = 2u << 20;
    Chatvault__V1__ChatMessage m = base_message();
    m.body.data = (uint8_t *)body;
    m.body.len = 1u << 20;
    size_t len;
    uint8_t *buf = pack(&m, &len);
    cv_envelope env;
    int r = cv_envelope_decode(&wide, "chat.general", buf, len, tiny, &env);
    TAP_IS_INT(r, -ENOMEM, "decode past the arena's bound: -ENOMEM");
    cv_arena_reset(tiny);
    m.body.len = 1000;
    free(buf);
    buf = pack(&m, &len);
    r = cv_envelope_decode(&wide, "chat.general", buf, len, tiny, &env);
    TAP_IS_INT(r, 0, "after reset the same arena decodes a small message");
    free(buf);
    free(body);
    cv_arena_free(tiny);
}

static void test_utf8(void) {
    static const struct {
        const char *s;
        size_t len;
        int ok;
        const char *name;
    } cases[] = {
        {"", 0, 1, "empty"},
        {"plain ascii", 11, 1, "ASCII"},
        {"\xc3\xa9", 2, 1, "2-byte U+00E9"},
        {"\xe2\x82\xac", 3, 1, "3-byte U+20AC"},
        {"\xf0\x9f\x98\x80", 4, 1, "4-byte U+1F600"},
        {"\xc2\x80", 2, 1, "smallest 2-byte U+0080"},
        {"\xdf\xbf", 2, 1, "largest 2-byte U+07FF"},
        {"\xe0\xa0\x80", 3, 1, "smallest 3-byte U+0800"},
        {"\xef\xbf\xbf", 3, 1, "U+FFFF"},
        {"\xed\x9f\xbf", 3, 1, "U+D7FF, below the surrogates"},
        {"\xee\x80\x80", 3, 1, "U+E000, above the surrogates"},
        {"\xf4\x8f\xbf\xbf", 4, 1, "U+10FFFF, the last code point"},
        {"a\0b", 3, 0, "NUL"},
        {"\xc0\x80", 2, 0, "overlong NUL (C0 80)"},
        {"\xc1\xbf", 2, 0, "overlong 2-byte (C1 BF)"},
        {"\xe0\x9f\xbf", 3, 0, "overlong 3-byte (E0 9F BF)"},
        {"\xf0\x8f\xbf\xbf", 4, 0, "overlong 4-byte (F0 8F BF BF)"},
        {"\xed\xa0\x80", 3, 0, "surrogate U+D800"},
        {"\xed\xbf\xbf", 3, 0, "surrogate U+DFFF"},
        {"\xed\xa0\xbd\xed\xb8\x80", 6, 0, "CESU-8 surrogate pair"},
        {"\xf4\x90\x80\x80", 4, 0, "U+110000, past U+10FFFF"},
        {"\xf7\xbf\xbf\xbf", 4, 0, "F7 lead, past U+10FFFF"},
        {"\xf8\x88\x80\x80\x80", 5, 0, "5-byte form"},
        {"\xfe", 1, 0, "FE"},
        {"\xff", 1, 0, "FF"},
        {"\x80", 1, 0, "lone continuation byte"},
        {"\xc3", 1, 0, "truncated 2-byte at the end"},
        {"\xe2\x82", 2, 0, "truncated 3-byte at the end"},
        {"\xf0\x9f\x98", 3, 0, "truncated 4-byte at the end"},
        {"\xc3(", 2, 0, "2-byte with a bad continuation"},
        {"\xe2\x28\xa1", 3, 0, "3-byte with a bad continuation"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        tap_ok(cv_utf8_valid(cases[i].s, cases[i].len) == (cases[i].ok != 0),
               "utf8: %s %s", cases[i].name, cases[i].ok ? "valid" : "invalid");
    tap_ok(cv_utf8_valid(NULL, 0), "utf8: NULL with length 0 is empty, valid");
    /* The length bounds the scan: a valid prefix of an invalid string. */
    tap_ok(cv_utf8_valid("ab\xff", 2), "utf8: only len bytes are read");
}

static void test_json_string(void) {
    static const struct {
        const char *in;
        size_t len;
        const char *out;
        const char *name;
    } cases[] = {
        {"", 0, "\"\"", "empty"},
        {"hello", 5, "\"hello\"", "plain"},
        {"a\"b\\c", 5, "\"a\\\"b\\\\c\"", "quote and backslash"},
        {"\n\r\t", 3, "\"\\n\\r\\t\"", "newline, CR, tab"},
        {"\x01\x1f\x7f", 3, "\"\\u0001\\u001f\\u007f\"", "control bytes as \\u00XX"},
        {"a\0b", 3, "\"a\\u0000b\"", "NUL inside"},
        {"/", 1, "\"/\"", "slash unescaped"},
        {"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9,
         "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"", "valid UTF-8 copied whole"},
        {"a\xffz", 3, "\"a\\ufffdz\"", "invalid byte replaced"},
        {"\xc3", 1, "\"\\ufffd\"", "truncated sequence at the end replaced"},
        {"\xed\xa0\x80", 3, "\"\\ufffd\\ufffd\\ufffd\"", "surrogate replaced bytewise"},
        {"\xc0\xaf", 2, "\"\\ufffd\\ufffd\"", "overlong replaced"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cv_buf b;
        cv_buf_init(&b, 1 << 16);
        int r = cv_buf_json_string(&b, cases[i].in, cases[i].len);
        size_t want = strlen(cases[i].out);
        int ok = r == 0 && b.len == want && memcmp(b.data, cases[i].out, want) == 0;
        tap_ok(ok, "json: %s", cases[i].name);
        if (!ok)
            printf("#   got r=%d \"%.*s\", expected \"%s\"\n", r, (int)b.len,
                   b.data ? (const char *)b.data : "", cases[i].out);
        cv_buf_release(&b);
    }

    cv_buf b;
    cv_buf_init(&b, 64);
    int e = cv_buf_json_string(&b, NULL, 0);
    tap_ok(e == 0 && b.len == 2 && memcmp(b.data, "\"\"", 2) == 0,
           "json: NULL with length 0 (an empty protobuf bytes field) is \"\"");
    b.len = 0;
    int r = cv_buf_json_string(&b, "0123456789", 10);
    TAP_IS_INT(r, 0, "json: fits a bounded buffer");
    r = cv_buf_json_string(&b, "0123456789012345678901234567890123456789", 40);
    TAP_IS_INT(r, -ENOBUFS, "json: -ENOBUFS past the buffer's limit");
    TAP_IS_INT(b.len, 12, "json: a refused append leaves the buffer as it was");
    cv_buf_release(&b);

    cv_buf_init(&b, 1 << 16);
    r = cv_buf_append(&b, "x=", 2);
    r |= cv_buf_json_string(&b, "y", 1);
    r |= cv_buf_printf(&b, " n=%d", 42);
    r |= cv_buf_base64(&b, "hi!", 3);
    tap_ok(r == 0 && b.len == 14 && memcmp(b.data, "x=\"y\" n=42aGkh", 14) == 0,
           "buf: append, json, printf and base64 compose");
    cv_buf_release(&b);
}

int main(void) {
    arena = cv_arena_new((size_t)64 << 20);
    if (!arena) {
        printf("Bail out! out of memory\n");
        return 1;
    }
    test_reason_names();
    test_valid();
    test_rejects();
    test_embedded_nul();
    test_boundaries();
    test_arena();
    test_utf8();
    test_json_string();
    cv_arena_free(arena);
    return tap_done();
}
