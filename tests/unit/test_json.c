/*
 * Unit tests of broker/json.c (the reader `chatvault lag` uses) and of
 * cv_http_parse_listen.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include "http.h"
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
    {"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["
     "]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
     0},
};

static void test_parse_table(void) {
    for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++) {
        cv_json *j = NULL;
        char err[200] = "";
        int r = cv_json_parse(docs[i].doc, strlen(docs[i].doc), &j, err, sizeof(err));
        tap_ok((r == 0) == docs[i].valid, "%s: %.40s",
               docs[i].valid ? "valid" : "invalid", docs[i].doc);
        if (r < 0)
            tap_ok(strstr(err, "at byte") != NULL, "error names the offset: %s", err);
        cv_json_free(j);
    }
}

static void test_access(void) {
    const char *doc =
        "{\"status\":\"STALL\",\"n\":42,\"ok\":true,\"s\":\"\\u00e9\\ud83d\\ude00\","
        "\"list\":[{\"channel\":\"a\"},{\"channel\":\"b\"}]}";
    cv_json *j = NULL;
    char err[200];
    TAP_IS_INT(cv_json_parse(doc, strlen(doc), &j, err, sizeof(err)), 0, "parse");
    TAP_IS_STR(cv_json_str(cv_json_get(j, "status"), NULL), "STALL", "string member");
    TAP_IS_INT(cv_json_num(cv_json_get(j, "n"), -1), 42, "number member");
    tap_ok(cv_json_bool(cv_json_get(j, "ok"), false), "bool member");
    TAP_IS_STR(cv_json_str(cv_json_get(j, "s"), NULL), "\xc3\xa9\xf0\x9f\x98\x80",
               "\\u escapes and a surrogate pair decode to UTF-8");
    tap_ok(cv_json_get(j, "missing") == NULL, "missing member is NULL");
    TAP_IS_INT(cv_json_num(cv_json_get(j, "status"), -7), -7,
               "wrong type gives the default");
    const cv_json *l = cv_json_get(j, "list");
    TAP_IS_STR(cv_json_str(cv_json_get(l->child->next, "channel"), NULL), "b",
               "array elements in order");
    j = cv_json_free(j);
    tap_ok(j == NULL, "free returns NULL");
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
    test_access();
    test_listen();
    return tap_done();
}
