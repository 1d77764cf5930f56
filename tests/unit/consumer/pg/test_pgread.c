/*
 * Unit tests of consumer/pg/pgread.c without a server: a row rebuilt as the
 * ChatMessage it was stored from (replay sends it, verify --repair writes
 * it into the log) carries its version, and an original's bytes are those
 * of a ChatMessage without versions (proto3 leaves the defaults out), so
 * an original replayed or rebuilt is the same record it always was.
 */
#include <stdio.h>
#include <string.h>

#include "chatvault.pb-c.h"
#include "pg/pgread.h"
#include "tap.h"

static cv_pgrow row_of(uint32_t revision, bool deleted, const char *body) {
    return (cv_pgrow){
        .channel = "general",
        .message_id = "m-42",
        .topic = "chat.general",
        .timestamp_ms = -1,
        .sender_id = "ada",
        .sent_at_us = 1700000000000000,
        .body = (const unsigned char *)body,
        .body_len = strlen(body),
        .content_type = "text/plain",
        .reply_to = "",
        .revision = revision,
        .deleted = deleted,
    };
}

static void test_pack_versions(void) {
    cv_buf out;
    cv_buf_init(&out, 1 << 20);
    cv_pgrow row = row_of(3, true, "");
    TAP_IS_INT(cv_pgrow_pack(&row, &out), 0, "a tombstone row packs");
    Chatvault__V1__ChatMessage *m =
        chatvault__v1__chat_message__unpack(NULL, out.len, out.data);
    tap_ok(m != NULL, "and unpacks");
    if (m) {
        TAP_IS_INT(m->revision, 3, "the revision is carried");
        tap_ok(m->deleted, "deleted is carried");
        TAP_IS_INT(m->body.len, 0, "the body is empty");
        TAP_IS_STR(m->message_id, "m-42", "the message id is kept");
        chatvault__v1__chat_message__free_unpacked(m, NULL);
    }

    /* An original: the same bytes as a ChatMessage built without the
     * version fields. */
    row = row_of(0, false, "hello");
    TAP_IS_INT(cv_pgrow_pack(&row, &out), 0, "an original packs");
    Chatvault__V1__ChatMessage o = CHATVAULT__V1__CHAT_MESSAGE__INIT;
    o.message_id = "m-42";
    o.channel = "general";
    o.sender_id = "ada";
    o.sent_at_us = 1700000000000000;
    o.body.data = (uint8_t *)"hello";
    o.body.len = 5;
    o.content_type = "text/plain";
    o.reply_to = "";
    unsigned char want[256];
    size_t wl = chatvault__v1__chat_message__pack(&o, want);
    tap_ok(out.len == wl && memcmp(out.data, want, wl) == 0,
           "an original packs to the bytes of a ChatMessage without versions");

    row = row_of(1, false, "hello");
    cv_pgrow_pack(&row, &out);
    tap_ok(out.len != wl || memcmp(out.data, want, wl) != 0,
           "an edit with the same body packs to other bytes (it is another record)");
    cv_buf_release(&out);
}

int main(void) {
    test_pack_versions();
    return tap_done();
}
