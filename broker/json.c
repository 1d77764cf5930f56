/*
 * json — see json.h. A recursive-descent parser with a depth bound.
 */
#include "json.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 64

typedef struct parser {
    const char *s;
    size_t len, pos;
    char *err;
    size_t errlen;
    int failed;
} parser;

static int fail(parser *p, const char *what) {
    if (!p->failed)
        snprintf(p->err, p->errlen, "invalid JSON at byte %zu: %s", p->pos, what);
    p->failed = 1;
    return -EINVAL;
}

static void skip_ws(parser *p) {
    while (p->pos < p->len && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' ||
                               p->s[p->pos] == '\n' || p->s[p->pos] == '\r'))
        p->pos++;
}

static int lit(parser *p, const char *word) {
    size_t n = strlen(word);
    if (p->len - p->pos < n || memcmp(p->s + p->pos, word, n) != 0)
        return fail(p, "unexpected token");
    p->pos += n;
    return 0;
}

static int hex4(parser *p, unsigned *ret) {
    if (p->len - p->pos < 4)
        return fail(p, "short \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p->s[p->pos++];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return fail(p, "bad \\u escape");
    }
    *ret = v;
    return 0;
}

static size_t put_utf8(char *o, unsigned cp) {
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* Parses a string literal at p->pos (the opening quote) into a new buffer. */
static int string(parser *p, char **ret) {
    p->pos++; /* opening quote */
    size_t start = p->pos, end = start;
    while (end < p->len && p->s[end] != '"') /* upper bound of the output */
        end += p->s[end] == '\\' ? 2 : 1;
    if (end >= p->len)
        return fail(p, "unterminated string");
    char *o = malloc(end - start + 1), *w = o;
    if (!o)
        return fail(p, "out of memory");
    while (p->s[p->pos] != '"') {
        unsigned char c = (unsigned char)p->s[p->pos++];
        if (c < 0x20) {
            free(o);
            return fail(p, "control character in string");
        }
        if (c != '\\') {
            *w++ = (char)c;
            continue;
        }
        char e = p->s[p->pos++];
        unsigned cp, lo;
        switch (e) {
        case '"':
            *w++ = '"';
            break;
        case '\\':
            *w++ = '\\';
            break;
        case '/':
            *w++ = '/';
            break;
        case 'b':
            *w++ = '\b';
            break;
        case 'f':
            *w++ = '\f';
            break;
        case 'n':
            *w++ = '\n';
            break;
        case 'r':
            *w++ = '\r';
            break;
        case 't':
            *w++ = '\t';
            break;
        case 'u':
            if (hex4(p, &cp) < 0) {
                free(o);
                return -EINVAL;
            }
            if (cp >= 0xd800 && cp < 0xdc00 && p->len - p->pos >= 6 &&
                p->s[p->pos] == '\\' && p->s[p->pos + 1] == 'u') {
                p->pos += 2;
                if (hex4(p, &lo) < 0) {
                    free(o);
                    return -EINVAL;
                }
                cp = lo >= 0xdc00 && lo < 0xe000
                         ? 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00)
                         : 0xfffd;
            } else if (cp >= 0xd800 && cp < 0xe000) {
                cp = 0xfffd;
            }
            /* \uXXXX is 6 input bytes, at most 4 output bytes; a pair is 12. */
            w += put_utf8(w, cp);
            break;
        default:
            free(o);
            return fail(p, "bad escape");
        }
    }
    p->pos++; /* closing quote */
    *w = '\0';
    *ret = o;
    return 0;
}

static int value(parser *p, cv_json *j, int depth);

static int container(parser *p, cv_json *j, int depth, char close) {
    bool obj = close == '}';
    j->type = obj ? CV_JSON_OBJ : CV_JSON_ARR;
    p->pos++;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == close) {
        p->pos++;
        return 0;
    }
    cv_json **tail = &j->child;
    for (;;) {
        cv_json *c = calloc(1, sizeof(*c));
        if (!c)
            return fail(p, "out of memory");
        *tail = c;
        tail = &c->next;
        skip_ws(p);
        if (obj) {
            if (p->pos >= p->len || p->s[p->pos] != '"')
                return fail(p, "expected a member name");
            if (string(p, &c->key) < 0)
                return -EINVAL;
            skip_ws(p);
            if (p->pos >= p->len || p->s[p->pos] != ':')
                return fail(p, "expected ':'");
            p->pos++;
        }
        if (value(p, c, depth + 1) < 0)
            return -EINVAL;
        skip_ws(p);
        if (p->pos < p->len && p->s[p->pos] == ',') {
            p->pos++;
            continue;
        }
        if (p->pos < p->len && p->s[p->pos] == close) {
            p->pos++;
            return 0;
        }
        return fail(p, obj ? "expected ',' or '}'" : "expected ',' or ']'");
    }
}

static int value(parser *p, cv_json *j, int depth) {
    if (depth > MAX_DEPTH)
        return fail(p, "nested too deeply");
    skip_ws(p);
    if (p->pos >= p->len)
        return fail(p, "unexpected end");
    char c = p->s[p->pos];
    switch (c) {
    case '{':
        return container(p, j, depth, '}');
    case '[':
        return container(p, j, depth, ']');
    case '"':
        j->type = CV_JSON_STR;
        return string(p, &j->str);
    case 't':
        j->type = CV_JSON_BOOL;
        j->b = true;
        return lit(p, "true");
    case 'f':
        j->type = CV_JSON_BOOL;
        return lit(p, "false");
    case 'n':
        j->type = CV_JSON_NULL;
        return lit(p, "null");
    default:
        break;
    }
    if (c != '-' && (c < '0' || c > '9'))
        return fail(p, "unexpected character");
    char buf[64];
    size_t n = 0;
    while (p->pos < p->len && n < sizeof(buf) - 1 &&
           strchr("+-0123456789.eE", p->s[p->pos]))
        buf[n++] = p->s[p->pos++];
    buf[n] = '\0';
    char *end;
    j->type = CV_JSON_NUM;
    j->num = strtod(buf, &end);
    if (*end || n == 0)
        return fail(p, "bad number");
    return 0;
}

int cv_json_parse(const char *s, size_t len, cv_json **ret_root, char *errbuf,
                  size_t errlen) {
    parser p = {.s = s, .len = len, .err = errbuf, .errlen = errlen};
    cv_json *root = calloc(1, sizeof(*root));
    if (!root) {
        snprintf(errbuf, errlen, "out of memory");
        return -ENOMEM;
    }
    if (value(&p, root, 0) == 0) {
        skip_ws(&p);
        if (p.pos != p.len)
            fail(&p, "trailing bytes");
    }
    if (p.failed) {
        cv_json_free(root);
        return -EINVAL;
    }
    *ret_root = root;
    return 0;
}

cv_json *cv_json_free(cv_json *j) {
    while (j) {
        cv_json *next = j->next;
        cv_json_free(j->child);
        free(j->str);
        free(j->key);
        free(j);
        j = next;
    }
    return NULL;
}

const cv_json *cv_json_get(const cv_json *obj, const char *key) {
    if (!obj || obj->type != CV_JSON_OBJ)
        return NULL;
    for (const cv_json *c = obj->child; c; c = c->next)
        if (strcmp(c->key, key) == 0)
            return c;
    return NULL;
}

double cv_json_num(const cv_json *j, double dflt) {
    return j && j->type == CV_JSON_NUM ? j->num : dflt;
}

const char *cv_json_str(const cv_json *j, const char *dflt) {
    return j && j->type == CV_JSON_STR ? j->str : dflt;
}

bool cv_json_bool(const cv_json *j, bool dflt) {
    return j && j->type == CV_JSON_BOOL ? j->b : dflt;
}
