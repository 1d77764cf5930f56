/*
 * Unit tests of broker/select.c: the message selectors of replay, export
 * and verify — time forms, channel patterns, the --ids file, record
 * matching and the PostgreSQL selection built from them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "select.h"
#include "tap.h"
#include "util.h"

static void test_times(void) {
    int64_t t;
    TAP_IS_INT(cv_parse_time_us("2026-11-22T05:00:00Z", &t), 0, "RFC 3339 UTC parses");
    TAP_IS_INT(t, INT64_C(1795323600000000), "... to Unix microseconds");
    TAP_IS_INT(cv_parse_time_us("2026-11-22T05:00:00.25Z", &t), 0, "fractions parse");
    TAP_IS_INT(t, INT64_C(1795323600250000), "... to the microsecond");
    TAP_IS_INT(cv_parse_time_us("2026-11-22", &t), 0, "a date parses");
    TAP_IS_INT(t, INT64_C(1795305600000000), "... as its midnight UTC");
    TAP_IS_INT(cv_parse_time_us("1700000000123", &t), 0, "Unix ms parse");
    TAP_IS_INT(t, INT64_C(1700000000123000), "... to microseconds");
    int64_t before = cv_now_us();
    TAP_IS_INT(cv_parse_time_us("2h", &t), 0, "a duration ago parses");
    tap_ok(t <= before - INT64_C(7200000000) + 1000000 &&
               t >= before - INT64_C(7200000000) - 1000000,
           "2h is two hours before now");
    tap_ok(cv_parse_time_us("yesterday", &t) < 0, "words are refused");
    TAP_IS_INT(cv_parse_time_us("2026-11-22T06:00:00+01:00", &t), 0,
               "an offset from UTC parses");
    TAP_IS_INT(t, INT64_C(1795323600000000), "... +01:00 is an hour ahead of UTC");
    TAP_IS_INT(cv_parse_time_us("2026-11-22T00:30:00.25-04:30", &t), 0,
               "a negative offset, after a fraction");
    TAP_IS_INT(t, INT64_C(1795323600250000),
               "... -04:30 is four and a half hours behind");
    tap_ok(cv_parse_time_us("2026-11-22T05:00:00+24:00", &t) < 0,
           "an offset of 24 hours is refused");
    tap_ok(cv_parse_time_us("2026-11-22T05:00:00+0100", &t) < 0,
           "an offset without its colon is refused");
}

static void test_options(void) {
    cv_select s;
    cv_select_init(&s);
    TAP_IS_INT(cv_select_opt(&s, "t", CV_SEL_CHANNEL, "eu-*"), 1, "--channel pattern");
    TAP_IS_INT(cv_select_opt(&s, "t", CV_SEL_CHANNEL, "support"), 1, "--channel name");
    tap_ok(cv_select_channel(&s, "eu-west") && cv_select_channel(&s, "support"),
           "pattern and name select their channels");
    tap_ok(!cv_select_channel(&s, "us-east") && !cv_select_channel(&s, "support2"),
           "and nothing else");
    TAP_IS_INT(cv_select_opt(&s, "t", CV_SEL_PARTITION, "3"), 1, "--partition");
    TAP_IS_INT(cv_select_opt(&s, "t", CV_SEL_FROM_OFFSET, "10"), 1, "--from-offset");
    TAP_IS_INT(cv_select_opt(&s, "t", CV_SEL_TO_OFFSET, "20"), 1, "--to-offset");
    TAP_IS_INT(cv_select_opt(&s, "t", CV_SEL_SINCE, "1000"), 1, "--since (ms)");
    TAP_IS_INT(cv_select_opt(&s, "t", CV_SEL_UNTIL, "2000"), 1, "--until (ms)");
    fprintf(stderr, "# expected errors follow\n");
    TAP_IS_INT(cv_select_opt(&s, "t", CV_SEL_PARTITION, "-1"), -1,
               "a negative partition is refused");
    TAP_IS_INT(cv_select_opt(&s, "t", CV_SEL_TIME, "kafka"), -1,
               "--time takes sent or persisted");
    TAP_IS_INT(cv_select_opt(&s, "t", 'x', "1"), 0, "other options are not selectors");
    tap_ok(cv_select_match(&s, 3, 15, 1500000, -1, "support", "m"),
           "a record inside every bound matches");
    tap_ok(!cv_select_match(&s, 2, 15, 1500000, -1, "support", "m"),
           "another partition does not");
    tap_ok(!cv_select_match(&s, 3, 9, 1500000, -1, "support", "m") &&
               !cv_select_match(&s, 3, 21, 1500000, -1, "support", "m"),
           "offsets outside [from, to] do not");
    tap_ok(cv_select_match(&s, 3, 20, 1000000, -1, "support", "m") &&
               !cv_select_match(&s, 3, 20, 2000000, -1, "support", "m"),
           "since is inclusive, until exclusive (on sent_at)");
    TAP_IS_INT(cv_select_opt(&s, "t", CV_SEL_TIME, "persisted"), 1, "--time persisted");
    tap_ok(cv_select_match(&s, 3, 15, 0, 1500, "support", "m") &&
               !cv_select_match(&s, 3, 15, 1500000, 2500, "support", "m"),
           "with --time persisted, log records go by their Kafka timestamp");
    cv_pgread_sel ps;
    TAP_IS_INT(cv_select_pg(&s, "support", &ps), 0, "a PostgreSQL selection");
    tap_ok(ps.partition == 3 && ps.from_offset == 10 && ps.to_offset == 20 &&
               ps.time_field == CV_PGREAD_TIME_PERSISTED_AT && ps.since_us == 1000000 &&
               ps.until_us == 2000000 && ps.nids == 0,
           "carries every bound");
    tap_ok(!ps.history, "without --history: the latest versions only");
    s.history = true;
    cv_select_pg(&s, "support", &ps);
    tap_ok(ps.history, "--history reaches the PostgreSQL selection");
    cv_select_release(&s);
}

static void test_ids(void) {
    char path[] = "/tmp/cv-test-select-XXXXXX";
    int fd = mkstemp(path);
    FILE *f = fdopen(fd, "w");
    fputs("# ids\n\nplain-1\nsupport  both-1\n  sales\tsales-1  \nplain-2\n", f);
    fclose(f);
    cv_select s;
    cv_select_init(&s);
    TAP_IS_INT(cv_select_opt(&s, "t", CV_SEL_IDS, path), 1, "--ids FILE loads");
    TAP_IS_INT(s.nids, 4, "comments and blank lines skipped: 4 ids");
    tap_ok(cv_select_match(&s, 0, 0, 0, -1, "any", "plain-1") &&
               cv_select_match(&s, 0, 0, 0, -1, "other", "plain-2"),
           "an id without a channel selects in every channel");
    tap_ok(cv_select_match(&s, 0, 0, 0, -1, "support", "both-1") &&
               !cv_select_match(&s, 0, 0, 0, -1, "sales", "both-1"),
           "an id with a channel only in that channel");
    tap_ok(cv_select_match(&s, 0, 0, 0, -1, "sales", "sales-1"),
           "tabs and surrounding blanks separate too");
    tap_ok(!cv_select_match(&s, 0, 0, 0, -1, "support", "nope"),
           "other ids do not match");
    cv_pgread_sel ps;
    cv_select_pg(&s, "support", &ps);
    int seen = 0;
    for (size_t i = 0; i < ps.nids; i++)
        seen += strcmp(ps.ids[i], "both-1") == 0 || strcmp(ps.ids[i], "plain-1") == 0 ||
                strcmp(ps.ids[i], "plain-2") == 0;
    tap_ok(ps.nids == 3 && seen == 3,
           "PostgreSQL gets the channel's ids and the channel-less ones");
    cv_select_pg(&s, "nobody", &ps);
    TAP_IS_INT(ps.nids, 2, "a channel with no ids of its own gets the channel-less ones");
    cv_select_release(&s);
    f = fopen(path, "w");
    fputs("lonely \t \n", f);
    fclose(f);
    cv_select_init(&s);
    TAP_IS_INT(cv_select_opt(&s, "t", CV_SEL_IDS, path), 1, "trailing blanks load");
    tap_ok(cv_select_match(&s, 0, 0, 0, -1, "c", "lonely"),
           "as a channel-less id without them");
    cv_select_release(&s);
    fprintf(stderr, "# an expected error follows\n");
    cv_select_init(&s);
    TAP_IS_INT(cv_select_opt(&s, "t", CV_SEL_IDS, "/nonexistent/ids"), -1,
               "a missing --ids file is refused");
    cv_select_release(&s);
    unlink(path);
}

int main(void) {
    test_times();
    test_options();
    test_ids();
    return tap_done();
}
