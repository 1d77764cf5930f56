/*
 * msgsource — the selected messages of history, read from PostgreSQL, from
 * the encrypted log, or from both (auto), for replay and export.
 *
 * Messages come channel by channel (sorted by name), each channel in
 * (partition, offset) order. In auto mode PostgreSQL serves every message
 * it holds and the log fills the messages PostgreSQL lacks (the two
 * streams of a channel are merged by offset; a log record is PostgreSQL's
 * when both hold its offset and message id, as one offset may hold several
 * messages after Kafka's offsets started over); when PostgreSQL cannot be reached at
 * all, the log serves everything. Every log record is authenticated and its
 * hash chain checked by the reader before it is returned.
 */
#ifndef CV_MSGSOURCE_H
#define CV_MSGSOURCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cli.h"
#include "keyring.h"
#include "select.h"

typedef enum {
    CV_SRC_AUTO = 0,
    CV_SRC_PG,
    CV_SRC_LOG,
} cv_src_mode;

/* Parses a --source value: "pg" (or "postgres"), "log" or "auto". Prints
 * the one-line error as `cmd` and returns -EINVAL when it is none of them. */
int cv_src_parse_mode(const char *cmd, const char *arg, cv_src_mode *ret_mode);

/* --source as a table entry's handler (CV_OPT_CALL_AT on a cv_src_mode). */
int cv_src_mode_opt(const cv_cli_opt *opt, void *dest, const char *cmd,
                    const char *value);

/* One message; every pointer is valid until the next cv_src_next(). */
typedef struct cv_msg {
    bool from_log;
    const char *channel, *topic;
    int32_t partition;
    int64_t offset;
    int64_t timestamp_ms;    /* Kafka timestamp, -1 if none */
    int64_t persisted_at_us; /* -1 from the log (it keeps no store time) */
    /* The serialized ChatMessage: verbatim from the log, rebuilt from the
     * row from PostgreSQL. */
    const void *value;
    size_t value_len;
    const char *message_id, *sender_id, *content_type, *reply_to;
    int64_t sent_at_us;
    const unsigned char *body;
    size_t body_len;
    const char *const *attrs; /* key, value, ... */
    size_t nattrs;            /* pairs */
    uint32_t revision;        /* the version (0: the original) */
    bool deleted;             /* a tombstone */
} cv_msg;

typedef struct cv_src_conf {
    cv_src_mode mode;
    const char *pg_conninfo;
    const char *pg_conninfo_key; /* the config key it came from, for errors */
    const char *const *log_dirs;
    size_t nlog_dirs;
    const cv_keyring *keys; /* needed for the log */
    const char *topic_prefix;
    cv_select *sel; /* must outlive the source */
} cv_src_conf;

typedef struct cv_src cv_src;

/* Opens the stores the mode needs. In auto mode an unreachable PostgreSQL
 * is not an error: *ret_pg_error (if not NULL) receives why, and the log
 * serves. The caller owns *ret (cv_src_free). */
int cv_src_open(const cv_src_conf *conf, cv_src **ret, char *pg_error, size_t pg_errlen,
                char *errbuf, size_t errlen);

/* 1 and *msg filled, 0 at the end, or a negative error with errbuf set. */
int cv_src_next(cv_src *s, cv_msg *msg, char *errbuf, size_t errlen);

/* Whether PostgreSQL serves (false: the log serves everything). */
bool cv_src_has_pg(const cv_src *s);

cv_src *cv_src_free(cv_src *s);

#endif
