/*
 * reportfmt — an activity report, the JSON document cv_pgreport_build makes
 * (consumer/pg/pgreport.h), rendered for `chatvault report` and the
 * broker's /reports page: JSON, an aligned table, CSV or one HTML page with
 * SVG charts (no script, no network). Thread-safe: plain functions of
 * their arguments.
 */
#ifndef CV_REPORTFMT_H
#define CV_REPORTFMT_H

#include <jansson.h>

#include "util.h"

typedef enum cv_report_format {
    CV_REPORT_TABLE,
    CV_REPORT_CSV,
    CV_REPORT_JSON,
    CV_REPORT_HTML,
} cv_report_format;

/* "table", "csv", "json", "html": 0, else -EINVAL. */
int cv_report_format_parse(const char *name, cv_report_format *ret);

/* Appends DOC in FORMAT; HTML is a page that holds its style sheet (an
 * offline file). 0, or the cv_buf error. */
int cv_report_render(cv_buf *b, const json_t *doc, cv_report_format format);

/* Appends DOC as an HTML page that links STYLESHEET (a URL; NULL: the
 * style sheet inline) and has HEADER_HTML (trusted markup, or NULL) first
 * in its body. */
int cv_report_render_html(cv_buf *b, const json_t *doc, const char *stylesheet,
                          const char *header_html);

/* The page's style sheet. */
extern const char cv_report_css[];

#endif
