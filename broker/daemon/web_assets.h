/*
 * web_assets — the dashboard's static files, compiled into the binary from
 * broker/daemon/web/ by broker/daemon/web/embed.py (a build step), so the broker serves
 * them with no file or network access at run time.
 */
#ifndef CV_WEB_ASSETS_H
#define CV_WEB_ASSETS_H

#include <stddef.h>

typedef struct cv_web_asset {
    const char *path; /* "/index.html", "/vendor/uPlot.iife.min.js" */
    const char *content_type;
    const unsigned char *data;
    size_t len;
} cv_web_asset;

/* Terminated by an entry whose path is NULL. */
extern const cv_web_asset cv_web_assets[];

#endif
