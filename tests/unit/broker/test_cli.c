/*
 * Unit tests of broker/cli.c's option parser: every value syntax, the
 * one-line errors (unknown option, missing value, a number out of range),
 * repeated options, `--` and positional arguments, and a --help generated
 * from the table that lists every option in it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "tap.h"

typedef struct topts {
    bool verbose, quiet, hidden;
    const char *output, *name;
    int64_t count;
    const char *dirs[3];
    size_t ndirs;
    int calls;
    const char *last_call;
    const char *watch;
    bool watched;
    struct {
        const char *topic;
        int64_t partition;
    } sel;
} topts;

static int on_call(const cv_cli_opt *opt, void *dest, const char *cmd,
                   const char *value) {
    topts *o = dest;
    if (opt->id == 2) {
        o->watched = true;
        o->watch = value;
        return 0;
    }
    if (strcmp(value, "bad") == 0) {
        cv_error(cmd, "--%s: \"%s\" is bad", opt->name, value);
        return -1;
    }
    o->calls++;
    o->last_call = value;
    return 0;
}

/* CV_OPT_CALL_AT: dest is the member. */
static int on_member(const cv_cli_opt *opt, void *dest, const char *cmd,
                     const char *value) {
    __typeof__(((topts *)0)->sel) *sel = dest;
    sel->topic = value;
    return 0;
}

static const cv_cli_opt topts_table[] = {
    CV_OPT_FLAG("verbose", 'v', "say more", topts, verbose),
    CV_OPT_FLAG("quiet", 'q', "say less", topts, quiet),
    CV_OPT_STR("output", 'o', "FILE", "write to FILE", topts, output),
    CV_OPT_STR("name", 0, "N", "a name", topts, name),
    CV_OPT_INT("count", 0, "N", "how many, 1 to 10", topts, count, 1, 10),
    CV_OPT_LIST("dir", 0, "DIR", "a directory (repeatable, at most three)", topts, dirs,
                ndirs),
    CV_OPT_CALL("call", 0, "V", "a callback", on_call, 1),
    CV_OPT_CALL_OPTIONAL("watch", "S", "an optional value", on_call, 2),
    CV_OPT_CALL_AT("member", 0, "V", "a callback on a member", topts, sel, on_member, 3),
    CV_OPT_FLAG("hidden", 0, NULL, topts, hidden),
    CV_OPT_END,
};

static const cv_cli_opt tsel_table[] = {
    CV_OPT_STR("topic", 0, "T", "only this topic", __typeof__(((topts *)0)->sel), topic),
    CV_OPT_INT("partition", 0, "N", "only this partition", __typeof__(((topts *)0)->sel),
               partition, 0, INT32_MAX),
    CV_OPT_END,
};

static const cv_cli_group tsel_group = {"selection", tsel_table, offsetof(topts, sel)};

static const cv_cli_spec spec = {
    .name = "t",
    .usage = "t [options] [ARG...]",
    .about = "Tests the parser.\n",
    .opts = topts_table,
    .group = &tsel_group,
    .epilog = "The end.\n",
    .max_args = -1,
};

/* What one parse did: its result, and what it printed. */
typedef struct run {
    int rc;
    topts o;
    cv_cli cli;
    char out[8192], err[2048];
    char *argv[32];
} run;

static void slurp(FILE *f, char *buf, size_t len) {
    fflush(f);
    rewind(f);
    size_t n = fread(buf, 1, len - 1, f);
    buf[n] = '\0';
    fclose(f);
}

/* Parses the NULL-terminated words after the command name, with stdout
 * and stderr captured. */
static run *parse_with(const cv_cli_spec *sp, const char *const *words) {
    static run r;
    memset(&r, 0, sizeof(r));
    r.o.count = 5;
    int argc = 0;
    r.argv[argc++] = "chatvault t";
    for (; *words; words++)
        r.argv[argc++] = (char *)*words;
    FILE *out = tmpfile(), *err = tmpfile();
    fflush(stdout);
    fflush(stderr);
    int so = dup(1), se = dup(2);
    dup2(fileno(out), 1);
    dup2(fileno(err), 2);
    r.rc = cv_cli_parse(sp, argc, r.argv, &r.o, &r.cli);
    fflush(stdout);
    fflush(stderr);
    dup2(so, 1);
    dup2(se, 2);
    close(so);
    close(se);
    slurp(out, r.out, sizeof(r.out));
    slurp(err, r.err, sizeof(r.err));
    return &r;
}

#define PARSE(...) parse_with(&spec, (const char *const[]){__VA_ARGS__, NULL})

static bool one_line(const char *s, const char *prefix) {
    size_t n = strlen(s);
    return strncmp(s, prefix, strlen(prefix)) == 0 && n > 0 && s[n - 1] == '\n' &&
           memchr(s, '\n', n - 1) == NULL;
}

static void test_values(void) {
    run *r = PARSE("--output", "a", "--name=b", "-v", "--count", "7");
    TAP_IS_INT(r->rc, CV_CLI_RUN, "--opt value, --opt=value, -x: parsed");
    TAP_IS_STR(r->o.output, "a", "--output a");
    TAP_IS_STR(r->o.name, "b", "--name=b");
    tap_ok(r->o.verbose && !r->o.quiet, "-v sets its flag, not the other");
    TAP_IS_INT(r->o.count, 7, "--count 7");
    TAP_IS_INT(r->cli.nargs, 0, "no positional arguments");

    r = PARSE("-ofile");
    TAP_IS_STR(r->o.output, "file", "-oVALUE");
    r = PARSE("-o", "file2");
    TAP_IS_STR(r->o.output, "file2", "-o VALUE");
    r = PARSE("-vqo", "x");
    tap_ok(r->rc == CV_CLI_RUN && r->o.verbose && r->o.quiet && r->o.output &&
               strcmp(r->o.output, "x") == 0,
           "grouped short options: -vqo x");
    r = PARSE("--outp", "p");
    TAP_IS_STR(r->o.output, "p", "a unique prefix of a long name, as getopt takes it");
    r = PARSE("--name=");
    TAP_IS_STR(r->o.name, "", "--name= gives the empty string");
    r = PARSE("--output", "--verbose");
    TAP_IS_STR(r->o.output, "--verbose", "a value may start with a dash");
    tap_ok(!r->o.verbose, "... and is not taken for an option");
    TAP_IS_INT(PARSE("x")->o.count, 5, "a default stays when the option is not given");
}

static void test_errors(void) {
    run *r = PARSE("--bogus");
    TAP_IS_INT(r->rc, CV_EXIT_USAGE, "unknown option: exit 2");
    tap_ok(one_line(r->err, "chatvault t: unrecognized option '--bogus'"),
           "... one line naming it");
    if (!one_line(r->err, "chatvault t: "))
        printf("#   %s", r->err);
    r = PARSE("-x");
    tap_ok(r->rc == CV_EXIT_USAGE &&
               one_line(r->err, "chatvault t: invalid option -- 'x'"),
           "unknown short option: exit 2, one line");
    r = PARSE("--output");
    tap_ok(r->rc == CV_EXIT_USAGE &&
               one_line(r->err, "chatvault t: option '--output' requires an argument"),
           "missing value: exit 2, one line");
    r = PARSE("-o");
    tap_ok(r->rc == CV_EXIT_USAGE &&
               one_line(r->err, "chatvault t: option requires an argument -- 'o'"),
           "missing value of a short option: exit 2, one line");
    r = PARSE("--verbose=yes");
    tap_ok(
        r->rc == CV_EXIT_USAGE &&
            one_line(r->err, "chatvault t: option '--verbose' doesn't allow an argument"),
        "a value for a flag: exit 2, one line");
    r = PARSE("--count", "11");
    tap_ok(
        r->rc == CV_EXIT_USAGE &&
            one_line(r->err, "chatvault t: --count: \"11\" is not a number from 1 to 10"),
        "integer above its range: exit 2, one line with the range");
    r = PARSE("--count=0");
    tap_ok(r->rc == CV_EXIT_USAGE, "integer below its range: exit 2");
    r = PARSE("--count", "3x");
    tap_ok(r->rc == CV_EXIT_USAGE && one_line(r->err, "chatvault t: --count: "),
           "not a number: exit 2, one line");
    r = PARSE("--count", "");
    TAP_IS_INT(r->rc, CV_EXIT_USAGE, "an empty number: exit 2");
    r = PARSE("--partition", "-1");
    TAP_IS_INT(r->rc, CV_EXIT_USAGE, "a group's integer is checked too");
    r = PARSE("--call", "bad");
    tap_ok(r->rc == CV_EXIT_USAGE && one_line(r->err, "chatvault t: --call: \"bad\""),
           "a callback's error: exit 2, its one line");
    r = PARSE("--ver");
    TAP_IS_INT(r->rc, CV_CLI_RUN, "--ver is a unique prefix of --verbose");
    r = PARSE("--c", "1");
    tap_ok(r->rc == CV_EXIT_USAGE &&
               one_line(r->err, "chatvault t: option '--c' is ambiguous"),
           "an ambiguous prefix: exit 2, one line");
    cv_cli_spec none = spec;
    none.max_args = 0;
    r = parse_with(&none, (const char *const[]){"-v", "extra", NULL});
    tap_ok(r->rc == CV_EXIT_USAGE &&
               one_line(r->err, "chatvault t: unexpected argument \"extra\""),
           "a positional argument where none is taken: exit 2, one line");
}

static void test_repeated(void) {
    run *r = PARSE("--name", "a", "--name", "b");
    TAP_IS_STR(r->o.name, "b", "a repeated string option: the last wins");
    r = PARSE("--dir", "a", "--dir=b", "--dir", "c");
    TAP_IS_INT(r->o.ndirs, 3, "a repeated list option collects every value");
    tap_ok(r->o.ndirs == 3 && strcmp(r->o.dirs[0], "a") == 0 &&
               strcmp(r->o.dirs[2], "c") == 0,
           "... in order");
    r = PARSE("--dir", "a", "--dir", "b", "--dir", "c", "--dir", "d");
    tap_ok(r->rc == CV_EXIT_USAGE && one_line(r->err, "chatvault t: more than 3 --dir"),
           "one value too many for a list: exit 2, one line");
    r = PARSE("--member", "m");
    TAP_IS_STR(r->o.sel.topic, "m", "a callback given a member writes into it");
    r = PARSE("--call", "x", "--call", "y");
    tap_ok(r->o.calls == 2 && strcmp(r->o.last_call, "y") == 0,
           "a callback is called once per occurrence");
    r = PARSE("--count", "2", "--count", "3");
    TAP_IS_INT(r->o.count, 3, "a repeated integer: the last wins");
}

static void test_positional(void) {
    run *r = PARSE("a", "-v", "b", "--", "--quiet", "-o", "-");
    TAP_IS_INT(r->rc, CV_CLI_RUN, "options among arguments, and --");
    TAP_IS_INT(r->cli.nargs, 5, "... five positional arguments");
    tap_ok(r->cli.nargs == 5 && strcmp(r->cli.args[0], "a") == 0 &&
               strcmp(r->cli.args[1], "b") == 0 &&
               strcmp(r->cli.args[2], "--quiet") == 0 &&
               strcmp(r->cli.args[3], "-o") == 0 && strcmp(r->cli.args[4], "-") == 0,
           "... in order; after -- nothing is an option");
    tap_ok(r->o.verbose && !r->o.quiet && !r->o.output,
           "options before -- apply, those after do not");
    r = PARSE("-");
    tap_ok(r->cli.nargs == 1 && strcmp(r->cli.args[0], "-") == 0,
           "a lone - is an argument");
    r = PARSE("--watch", "3", "x");
    tap_ok(r->o.watched && r->o.watch && strcmp(r->o.watch, "3") == 0 &&
               r->cli.nargs == 1,
           "an optional value: --watch 3 takes the number");
    r = PARSE("--watch", "x");
    tap_ok(r->o.watched && !r->o.watch && r->cli.nargs == 1 &&
               strcmp(r->cli.args[0], "x") == 0,
           "... --watch x leaves x an argument");
    r = PARSE("--watch=y");
    tap_ok(r->o.watch && strcmp(r->o.watch, "y") == 0, "... --watch=y takes y");
}

static void test_common(void) {
    run *r = PARSE("-c", "f.conf", "--set", "a.b=1", "--set=c.d=2");
    TAP_IS_INT(r->rc, CV_CLI_RUN, "-c and --set");
    TAP_IS_STR(r->cli.config.path, "f.conf", "-c FILE");
    tap_ok(r->cli.config.nsets == 2 && strcmp(r->cli.config.sets[0], "a.b=1") == 0 &&
               strcmp(r->cli.config.sets[1], "c.d=2") == 0,
           "--set, repeatable");
    r = PARSE("--config=g.conf");
    TAP_IS_STR(r->cli.config.path, "g.conf", "--config=FILE");
    cv_cli_spec bare = spec;
    bare.no_config = true;
    r = parse_with(&bare, (const char *const[]){"-c", "x", NULL});
    TAP_IS_INT(r->rc, CV_EXIT_USAGE, "a command without a config refuses -c");
}

static void test_help(void) {
    run *r = PARSE("-v", "--help", "--bogus");
    TAP_IS_INT(r->rc, CV_EXIT_OK, "--help: exit 0, before a later error");
    tap_ok(strncmp(r->out, "usage: chatvault t [options] [ARG...]\n", 38) == 0,
           "--help starts with the usage line");
    tap_ok(r->err[0] == '\0', "... and prints nothing on stderr");
    TAP_IS_INT(PARSE("-h")->rc, CV_EXIT_OK, "-h too");
    const cv_cli_opt *tables[] = {topts_table, tsel_table};
    int listed = 1;
    for (size_t t = 0; t < 2; t++)
        for (const cv_cli_opt *o = tables[t]; o->name; o++) {
            char want[64];
            snprintf(want, sizeof(want), "--%s%s%s", o->name, o->arg ? " " : "",
                     o->arg ? o->arg : "");
            if (o->arg && o->optional)
                snprintf(want, sizeof(want), "--%s [%s]", o->name, o->arg);
            bool found = strstr(r->out, want) != NULL;
            if (found != (o->help != NULL)) {
                printf("#   %s %s\n", want, found ? "is listed" : "is missing");
                listed = 0;
            }
            if (o->help && !strstr(r->out, o->help)) {
                printf("#   the help of --%s is missing\n", o->name);
                listed = 0;
            }
        }
    tap_ok(listed, "--help lists every option of the tables, with its help");
    tap_ok(strstr(r->out, "  -o, --output FILE     write to FILE\n") != NULL,
           "... short and long name, value name, help in one column");
    tap_ok(strstr(r->out, "  -c, --config FILE") &&
               strstr(r->out, "      --set key=value") && strstr(r->out, "  -h, --help"),
           "... and -c, --set and --help");
    tap_ok(strstr(r->out, "\nselection:\n") && strstr(r->out, "Tests the parser.") &&
               strstr(r->out, "The end."),
           "... the group's heading, the description and the epilog");
    int width_ok = 1;
    for (char *l = r->out; *l;) {
        char *nl = strchr(l, '\n');
        size_t n = nl ? (size_t)(nl - l) : strlen(l);
        if (n >= 80)
            width_ok = 0;
        l += n + (nl ? 1 : 0);
    }
    tap_ok(width_ok, "every line of the help is shorter than 80 columns");
}

int main(void) {
    test_values();
    test_errors();
    test_repeated();
    test_positional();
    test_common();
    test_help();
    return tap_done();
}
