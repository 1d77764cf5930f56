/*
 * Unit tests of broker/json.c (how the program reads JSON: import files,
 * /api/lag, /api/kafka) and of cv_http_parse_listen.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include "daemon/http.h"
#include "json.h"
#include "tap.h"

static const struct {
    const char *doc;
    int valid;
} docs[] = {
    {"{}", 1},
    {"[]", 1},
    {" {\"a\" : [1, 2.5e3, -0.5, true, false, null, \"x\"]} ", 1},
    {"\"\\u00e9\\ud83d\\ude00\\n\"", 1},
    {"", 0},
    {"{", 0},
    {"{\"a\" 1}", 0},
    {"[1,]", 0},
    {"[1] x", 0},
    {"\"unterminated", 0},
    {"\"bad \\q escape\"", 0},
    {"\"\\u12\"", 0},
    {"tru", 0},
    {"\"ctl \x01\"", 0},
    {"{\"a\":1,\"a\":2}", 0},
    {"\"\\u0000\"", 0},
    {"\"\xff\"", 0},
    {"[99999999999999999999]", 0},
};

static void test_parse_table(void) {
    for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++) {
        json_t *j = NULL;
        char err[200] = "";
        int r = cv_json_parse(docs[i].doc, strlen(docs[i].doc), &j, err, sizeof(err));
        tap_ok((r == 0) == docs[i].valid, "%s: %.40s",
               docs[i].valid ? "valid" : "invalid", docs[i].doc);
        if (r < 0)
            tap_ok(strstr(err, "at byte") != NULL, "error names the offset: %s", err);
        json_decref(j);
    }
}

/* Nesting is bounded (jansson: 2048 levels); deeper input fails cleanly. */
static void test_depth(void) {
    enum { DEEP = 5000 };
    static char doc[2 * DEEP];
    memset(doc, '[', DEEP);
    memset(doc + DEEP, ']', DEEP);
    json_t *j = NULL;
    char err[200];
    tap_ok(cv_json_parse(doc, sizeof(doc), &j, err, sizeof(err)) == -EINVAL && !j,
           "%d levels refused: %s", DEEP, err);
    tap_ok(cv_json_parse(doc + DEEP - 64, 128, &j, err, sizeof(err)) == 0,
           "64 levels parse");
    json_decref(j);
}

static void test_access(void) {
    const char *doc =
        "{\"status\":\"STALL\",\"n\":42,\"ok\":true,\"s\":\"\\u00e9\\ud83d\\ude00\","
        "\"list\":[{\"channel\":\"a\"},{\"channel\":\"b\"}],"
        "\"big\":9223372036854775807,\"odd\":9007199254740993,\"whole\":7.0,"
        "\"frac\":7.5}";
    json_t *j = NULL;
    char err[200];
    TAP_IS_INT(cv_json_parse(doc, strlen(doc), &j, err, sizeof(err)), 0, "parse");
    TAP_IS_STR(cv_json_str(j, "status", NULL), "STALL", "string member");
    TAP_IS_INT(cv_json_num(j, "n", -1), 42, "number member");
    tap_ok(cv_json_bool(j, "ok", false), "bool member");
    TAP_IS_STR(cv_json_str(j, "s", NULL), "\xc3\xa9\xf0\x9f\x98\x80",
               "\\u escapes and a surrogate pair decode to UTF-8");
    tap_ok(cv_json_str(j, "missing", NULL) == NULL, "missing member gives the default");
    TAP_IS_INT(cv_json_num(j, "status", -7), -7, "wrong type gives the default");
    TAP_IS_INT(cv_json_int(j, "big", -1), 9223372036854775807LL,
               "an int64 reads exactly");
    TAP_IS_INT(cv_json_int(j, "odd", -1), 9007199254740993LL,
               "2^53 + 1 reads exactly (a double would not)");
    TAP_IS_INT(cv_json_int(j, "whole", -1), 7,
               "a real without fraction reads as integer");
    TAP_IS_INT(cv_json_int(j, "frac", -1), -1, "a real with a fraction is no integer");
    TAP_IS_INT(cv_json_int(NULL, "n", -3), -3, "no object: the default");
    const json_t *l = json_object_get(j, "list");
    TAP_IS_STR(cv_json_str(json_array_get(l, 1), "channel", NULL), "b",
               "array elements in order");
    json_decref(j);
}

static void test_listen(void) {
    struct sockaddr_storage ss;
    char err[200];
    TAP_IS_INT(cv_http_parse_listen("127.0.0.1:9187", &ss, err, sizeof(err)), 0, "ipv4");
    TAP_IS_INT(ntohs(((struct sockaddr_in *)&ss)->sin_port), 9187, "ipv4 port");
    TAP_IS_INT(cv_http_parse_listen("[::1]:80", &ss, err, sizeof(err)), 0, "ipv6");
    TAP_IS_INT(ss.ss_family, AF_INET6, "ipv6 family");
    TAP_IS_INT(cv_http_parse_listen(":9000", &ss, err, sizeof(err)), 0,
               "empty host: any");
    TAP_IS_INT(cv_http_parse_listen("localhost:1", &ss, err, sizeof(err)), 0,
               "localhost");
    tap_ok(cv_http_parse_listen("example.com:80", &ss, err, sizeof(err)) < 0,
           "a host name is refused: %s", err);
    tap_ok(cv_http_parse_listen("127.0.0.1", &ss, err, sizeof(err)) < 0, "no port: %s",
           err);
    tap_ok(cv_http_parse_listen("127.0.0.1:99999", &ss, err, sizeof(err)) < 0,
           "port out of range: %s", err);
}

int main(void) {
    test_parse_table();
    test_depth();
    test_access();
    test_listen();
    return tap_done();
}
