/*
 * select — the message selectors shared by replay, export and verify:
 * channels (names or shell patterns), Kafka coordinates, a time range on
 * sent_at or persisted_at, and a file of message ids. The same selection
 * applies to PostgreSQL (as a query per channel, see consumer/pg/pgread.h) and
 * to log records (cv_select_match).
 */
#ifndef CV_SELECT_H
#define CV_SELECT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cli.h"
#include "pg/pgread.h"

enum {
    CV_SEL_CHANNEL = 0x1000,
    CV_SEL_PARTITION,
    CV_SEL_FROM_OFFSET,
    CV_SEL_TO_OFFSET,
    CV_SEL_SINCE,
    CV_SEL_UNTIL,
    CV_SEL_TIME,
    CV_SEL_IDS,
    CV_SEL_ID,
};

/* The selection options as a table for cv_cli_parse (a group writing into
 * a cv_select), and the heading --help shows them under. */
#define CV_SELECT_TITLE "selection (all of them apply; every message when none is given)"
extern const cv_cli_opt cv_select_opts[];

typedef struct cv_select {
    const char **channels; /* names or patterns */
    size_t nchannels;
    int32_t partition;              /* -1: all */
    int64_t from_offset, to_offset; /* -1: unbounded */
    cv_pgread_time time_field;
    int64_t since_us, until_us; /* -1: unbounded */
    bool history; /* --history: every version of a message, not only its latest */
    bool has_ids;
    char **ids; /* sorted "channel\tid" or "\tid" (any channel) */
    size_t nids;
    /* scratch for cv_select_ids() */
    const char **chan_ids;
} cv_select;

void cv_select_init(cv_select *s);
void cv_select_release(cv_select *s);

/* Handles one selection option (opt: CV_SEL_*). 1: handled, 0: not a
 * selector option, -1: bad value (the error is printed, naming `cmd`). */
int cv_select_opt(cv_select *s, const char *cmd, int opt, const char *arg);

/* cv_select_opts' handler: dest is the cv_select, opt->id the CV_SEL_*. */
int cv_select_cli_opt(const cv_cli_opt *opt, void *dest, const char *cmd,
                      const char *value);

/* After all options: refuses a selection that can match nothing by its
 * own words (--from-offset above --to-offset, --since not before --until)
 * and a --channel that no channel name can match (a channel is
 * [A-Za-z0-9._-]; a pattern adds * ? [ ] ! ^). 0, or -1 with the error
 * printed, naming `cmd`: a usage error. */
int cv_select_check(const cv_select *s, const char *cmd);

bool cv_select_channel(const cv_select *s, const char *channel);

/* Fills a PostgreSQL selection for `channel`. With --ids, the ids of that
 * channel; the pointers live until the next call or release. */
int cv_select_pg(cv_select *s, const char *channel, cv_pgread_sel *ret);

/* Whether a record matches (channel already matched). `time_us` is the
 * record's sent_at (or, with --time persisted, its Kafka timestamp). */
bool cv_select_match(const cv_select *s, int32_t partition, int64_t offset,
                     int64_t sent_at_us, int64_t kafka_ts_ms, const char *channel,
                     const char *message_id);

/* Parses TIME as --since does, into Unix microseconds. */
int cv_parse_time_us(const char *s, int64_t *ret_us);

#endif
