/*
 * log_writer — writes ChatMessage records into an encrypted log, for the
 * CLI test of `chatvault log` (which only reads logs; the broker writes
 * them, and the broker needs PostgreSQL and Kafka).
 *
 *   log_writer KEY_FILE LOG_DIR CHANNEL PARTITION FIRST_OFFSET COUNT [BATCH]
 *
 * Topic "chat.<CHANNEL>", message ids "m<offset>", bodies "body <offset>",
 * sent_at_us 1700000000000000 + offset, one group commit per BATCH records
 * (default 100). Prints the last record's digest in hex.
 *
 * Environment: CV_TEST_LOG_ZSTD=LEVEL compresses the records (zstd level);
 * CV_TEST_LOG_BODY_SUFFIX=TEXT is appended to every body (up to 400 bytes).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "applog/applog.h"
#include "chatvault.pb-c.h"
#include "keyring.h"

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: log_writer KEY_FILE LOG_DIR CHANNEL PARTITION "
                        "FIRST_OFFSET COUNT [BATCH]\n");
        return 2;
    }
    char err[1024], topic[256], id[32], body[448];
    const char *zlevel = getenv("CV_TEST_LOG_ZSTD");
    const char *suffix = getenv("CV_TEST_LOG_BODY_SUFFIX");
    snprintf(topic, sizeof(topic), "chat.%s", argv[3]);
    int32_t partition = atoi(argv[4]);
    int64_t first = atoll(argv[5]), count = atoll(argv[6]);
    size_t batch = argc > 7 ? (size_t)atoi(argv[7]) : 100;
    if (batch == 0 || batch > 1000)
        batch = 100;
    cv_keyring *kr = NULL;
    cv_applog *log = NULL;
    if (cv_keyring_load(argv[1], &kr, err, sizeof(err)) < 0 ||
        cv_applog_open(argv[2], kr, 64 << 10, &log, err, sizeof(err)) < 0 ||
        (zlevel && cv_applog_set_compression(log, atoi(zlevel), err, sizeof(err)) < 0)) {
        fprintf(stderr, "log_writer: %s\n", err);
        return 1;
    }
    static unsigned char vals[1000][1024];
    cv_applog_entry ents[1000];
    unsigned char last[32] = {0};
    for (int64_t o = first; o < first + count;) {
        size_t n = 0;
        for (; n < batch && o < first + count; n++, o++) {
            Chatvault__V1__ChatMessage m = CHATVAULT__V1__CHAT_MESSAGE__INIT;
            snprintf(id, sizeof(id), "m%" PRId64, o);
            snprintf(body, sizeof(body), "body %" PRId64 "%.400s", o,
                     suffix ? suffix : "");
            m.message_id = id;
            m.channel = argv[3];
            m.sender_id = "tester";
            m.sent_at_us = 1700000000000000 + o;
            m.body.data = (uint8_t *)body;
            m.body.len = strlen(body);
            m.content_type = "text/plain";
            size_t len = chatvault__v1__chat_message__pack(&m, vals[n]);
            ents[n] = (cv_applog_entry){topic,   partition, o,  1700000000000 + o,
                                        vals[n], len,       {0}};
        }
        if (cv_applog_append(log, ents, n, err, sizeof(err)) < 0) {
            fprintf(stderr, "log_writer: %s\n", err);
            return 1;
        }
        memcpy(last, ents[n - 1].digest, 32);
    }
    for (int i = 0; i < 32; i++)
        printf("%02x", last[i]);
    printf("\n");
    cv_applog_free(log);
    cv_keyring_free(kr);
    return 0;
}
