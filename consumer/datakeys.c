/*
 * datakeys — see datakeys.h for the store and FORMAT.md "Data keys and
 * erasure" for what the log does with it.
 *
 * Keys are kept one allocation each, so a pointer handed out stays valid
 * while the list grows. Every change re-reads the file under the directory
 * lock first, so keys another process added (a repair writer beside the
 * broker) are kept, never overwritten.
 */
#include "datakeys.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

#define STORE_MAX (16u << 20)
#define WRAP_AD "chatvault data key"
#define WRAPPED_BYTES                                                                    \
    (crypto_aead_xchacha20poly1305_ietf_NPUBBYTES + CV_KEY_BYTES +                       \
     crypto_aead_xchacha20poly1305_ietf_ABYTES)
#define TEXT_MAX 200 /* user and reason, unescaped */

typedef struct dek {
    uint32_t id, master_id;
    char *topic;
    int64_t at_us; /* created, or erased */
    bool erased;
    char *user, *reason; /* erased */
    unsigned char wrapped[WRAPPED_BYTES];
    bool have_key;
    unsigned char key[CV_KEY_BYTES];
} dek;

/* An erased sender (see cv_datakeys_erase_sender). */
typedef struct esender {
    char *channel; /* "*": every channel */
    char *sender, *user, *reason;
    int64_t at_us;
} esender;

struct cv_datakeys {
    char *dir, *path;
    const cv_keyring *master;
    pthread_mutex_t mu;
    dek **v;
    size_t n, cap;
    esender *es;
    size_t nes;
    int lockfd; /* the writers' lock, -1 until taken */
};

static void dek_free(dek *d) {
    if (!d)
        return;
    free(d->topic);
    free(d->user);
    free(d->reason);
    sodium_memzero(d, sizeof(*d));
    free(d);
}

cv_datakeys *cv_datakeys_free(cv_datakeys *dk) {
    if (!dk)
        return NULL;
    for (size_t i = 0; i < dk->n; i++)
        dek_free(dk->v[i]);
    free(dk->v);
    for (size_t i = 0; i < dk->nes; i++) {
        free(dk->es[i].channel);
        free(dk->es[i].sender);
        free(dk->es[i].user);
        free(dk->es[i].reason);
    }
    free(dk->es);
    if (dk->lockfd >= 0)
        close(dk->lockfd);
    pthread_mutex_destroy(&dk->mu);
    free(dk->dir);
    free(dk->path);
    free(dk);
    return NULL;
}

const char *cv_datakeys_dir(const cv_datakeys *dk) {
    return dk->dir;
}

static dek *find(const cv_datakeys *dk, uint32_t id) {
    for (size_t i = 0; i < dk->n; i++)
        if (dk->v[i]->id == id)
            return dk->v[i];
    return NULL;
}

static void wrap_ad(unsigned char *ad, size_t *adlen, uint32_t id, const char *topic) {
    size_t l = sizeof(WRAP_AD); /* with its NUL */
    memcpy(ad, WRAP_AD, l);
    cv_be32(ad + l, id);
    l += 4;
    size_t tl = strlen(topic);
    memcpy(ad + l, topic, tl);
    *adlen = l + tl;
}

static void unwrap(const cv_datakeys *dk, dek *d) {
    const unsigned char *mk = cv_keyring_get(dk->master, d->master_id);
    if (!mk)
        return;
    unsigned char ad[sizeof(WRAP_AD) + 4 + 256];
    size_t adlen;
    wrap_ad(ad, &adlen, d->id, d->topic);
    const unsigned char *nonce = d->wrapped;
    const unsigned char *ct = d->wrapped + crypto_aead_xchacha20poly1305_ietf_NPUBBYTES;
    unsigned long long klen = 0;
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(d->key, &klen, NULL, ct,
                                                   WRAPPED_BYTES - (ct - d->wrapped), ad,
                                                   adlen, nonce, mk) == 0 &&
        klen == CV_KEY_BYTES)
        d->have_key = true;
}

/* Percent-escapes s (at most TEXT_MAX bytes of it) into a malloc'ed word. */
static char *escape(const char *s) {
    size_t n = strnlen(s, TEXT_MAX);
    char *o = malloc(3 * n + 2);
    if (!o)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= ' ' || c == '%' || c >= 0x7f)
            k += (size_t)sprintf(o + k, "%%%02x", c);
        else
            o[k++] = (char)c;
    }
    if (k == 0)
        o[k++] = '-';
    o[k] = '\0';
    return o;
}

static char *unescape(const char *s) {
    char *o = malloc(strlen(s) + 1);
    if (!o)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; s[i]; i++) {
        unsigned x;
        if (s[i] == '%' && sscanf(s + i + 1, "%2x", &x) == 1) {
            o[k++] = (char)x;
            i += 2;
        } else {
            o[k++] = s[i];
        }
    }
    o[k] = '\0';
    return o;
}

static int add(cv_datakeys *dk, dek *d) {
    if (dk->n == dk->cap) {
        size_t nc = dk->cap ? dk->cap * 2 : 8;
        dek **nv = realloc(dk->v, nc * sizeof(*nv));
        if (!nv)
            return -ENOMEM;
        dk->v = nv;
        dk->cap = nc;
    }
    dk->v[dk->n++] = d;
    return 0;
}

static bool topic_ok(const char *t) {
    size_t n = strlen(t);
    if (n == 0 || n > 255)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((t[i] >= 'A' && t[i] <= 'Z') || (t[i] >= 'a' && t[i] <= 'z') ||
              (t[i] >= '0' && t[i] <= '9') || t[i] == '.' || t[i] == '_' || t[i] == '-'))
            return false;
    return true;
}

/* Parses one line into a new dek; NULL with *why set when malformed. */
static dek *parse_line(char *line, const char **why) {
    char *f[8];
    size_t nf = 0;
    for (char *save = NULL, *t = strtok_r(line, " \t\r", &save); t && nf < 8;
         t = strtok_r(NULL, " \t\r", &save))
        f[nf++] = t;
    dek *d = calloc(1, sizeof(*d));
    if (!d) {
        *why = "out of memory";
        return NULL;
    }
    char *end;
    bool live = nf == 6 && strcmp(f[0], "dek") == 0;
    bool gone = nf == 6 && strcmp(f[0], "erased") == 0;
    if (!live && !gone) {
        *why = "expected \"dek ID TOPIC MASTER CREATED WRAPPED\" or \"erased ID TOPIC "
               "AT USER REASON\"";
        goto bad;
    }
    errno = 0;
    unsigned long long id = strtoull(f[1], &end, 10);
    if (*end || errno || id < CV_DATAKEY_ID_MIN || id > UINT32_MAX) {
        *why = "bad data key id";
        goto bad;
    }
    d->id = (uint32_t)id;
    if (!topic_ok(f[2]) || !(d->topic = strdup(f[2]))) {
        *why = "bad topic";
        goto bad;
    }
    if (live) {
        unsigned long long mid = strtoull(f[3], &end, 10);
        if (*end || mid == 0 || mid >= CV_DATAKEY_ID_MIN) {
            *why = "bad master key id";
            goto bad;
        }
        d->master_id = (uint32_t)mid;
        d->at_us = strtoll(f[4], &end, 10);
        size_t got = 0;
        if (*end || strlen(f[5]) != 2 * WRAPPED_BYTES ||
            sodium_hex2bin(d->wrapped, WRAPPED_BYTES, f[5], strlen(f[5]), NULL, &got,
                           NULL) != 0 ||
            got != WRAPPED_BYTES) {
            *why = "bad creation time or wrapped key";
            goto bad;
        }
    } else {
        d->erased = true;
        d->at_us = strtoll(f[3], &end, 10);
        if (*end || !(d->user = unescape(f[4])) || !(d->reason = unescape(f[5]))) {
            *why = "bad erasure line";
            goto bad;
        }
    }
    return d;
bad:
    dek_free(d);
    return NULL;
}

static esender *find_sender(const cv_datakeys *dk, const char *channel,
                            const char *sender) {
    for (size_t i = 0; i < dk->nes; i++)
        if (strcmp(dk->es[i].sender, sender) == 0 &&
            (strcmp(dk->es[i].channel, "*") == 0 ||
             strcmp(dk->es[i].channel, channel) == 0))
            return &dk->es[i];
    return NULL;
}

/* Adds an erased sender unless one with that channel and sender is there;
 * takes the strings. */
static int add_sender(cv_datakeys *dk, esender e) {
    for (size_t i = 0; i < dk->nes; i++)
        if (strcmp(dk->es[i].sender, e.sender) == 0 &&
            strcmp(dk->es[i].channel, e.channel) == 0) {
            free(e.channel);
            free(e.sender);
            free(e.user);
            free(e.reason);
            return 0;
        }
    esender *n = realloc(dk->es, (dk->nes + 1) * sizeof(*n));
    if (!n) {
        free(e.channel);
        free(e.sender);
        free(e.user);
        free(e.reason);
        return -ENOMEM;
    }
    dk->es = n;
    dk->es[dk->nes++] = e;
    return 0;
}

/* "sender CHANNEL SENDER AT USER REASON" */
static int parse_sender(cv_datakeys *dk, char *line, const char **why) {
    char *f[7];
    size_t nf = 0;
    for (char *save = NULL, *t = strtok_r(line, " \t\r", &save); t && nf < 7;
         t = strtok_r(NULL, " \t\r", &save))
        f[nf++] = t;
    char *end;
    esender e = {0};
    if (nf != 6 || (strcmp(f[1], "*") != 0 && !topic_ok(f[1]))) {
        *why = "expected \"sender CHANNEL SENDER AT USER REASON\"";
        return -EINVAL;
    }
    e.at_us = strtoll(f[3], &end, 10);
    if (*end) {
        *why = "bad erasure time";
        return -EINVAL;
    }
    e.channel = strdup(f[1]);
    e.sender = unescape(f[2]);
    e.user = unescape(f[4]);
    e.reason = unescape(f[5]);
    if (!e.channel || !e.sender || !e.user || !e.reason) {
        free(e.channel);
        free(e.sender);
        free(e.user);
        free(e.reason);
        return -ENOMEM;
    }
    return add_sender(dk, e);
}

/* Reads the file and merges what it holds into dk (new ids added; ids
 * erased there are erased here). */
static int load(cv_datakeys *dk, char *errbuf, size_t errlen) {
    char *text = NULL;
    size_t len = 0;
    int r = cv_read_file(dk->path, "data key store", STORE_MAX, true, &text, &len, errbuf,
                         errlen);
    if (r == -ENOENT)
        return 0;
    if (r < 0)
        return r;
    int lineno = 0;
    char *save = NULL;
    for (char *line = text; line && *line; line = save) {
        char *nl = strchr(line, '\n');
        save = nl ? nl + 1 : NULL;
        if (nl)
            *nl = '\0';
        lineno++;
        while (*line == ' ' || *line == '\t')
            line++;
        if (!*line || *line == '#')
            continue;
        const char *why = NULL;
        if (strncmp(line, "sender ", 7) == 0) {
            r = parse_sender(dk, line, &why);
            if (r == -EINVAL) {
                cv_errf(errbuf, errlen, "data key store %s:%d is malformed: %s", dk->path,
                        lineno, why);
            }
            if (r < 0)
                break;
            continue;
        }
        dek *d = parse_line(line, &why);
        if (!d) {
            cv_errf(errbuf, errlen, "data key store %s:%d is malformed: %s", dk->path,
                    lineno, why);
            r = -EINVAL;
            break;
        }
        dek *have = find(dk, d->id);
        if (have && !have->erased && d->erased) {
            /* erased by another process: take its record, keep the memory */
            have->erased = true;
            have->at_us = d->at_us;
            have->user = d->user;
            have->reason = d->reason;
            d->user = d->reason = NULL;
            have->have_key = false;
            sodium_memzero(have->key, sizeof(have->key));
        }
        if (have) {
            dek_free(d);
            continue;
        }
        if (!d->erased)
            unwrap(dk, d);
        if ((r = add(dk, d)) < 0) {
            dek_free(d);
            break;
        }
    }
    sodium_memzero(text, len);
    free(text);
    return r;
}

int cv_datakeys_open(const char *log_dir, const cv_keyring *master, cv_datakeys **ret,
                     char *errbuf, size_t errlen) {
    if (sodium_init() < 0) {
        cv_errf(errbuf, errlen, "libsodium failed to initialise");
        return -EIO;
    }
    cv_datakeys *dk = calloc(1, sizeof(*dk));
    if (!dk)
        return -ENOMEM;
    dk->lockfd = -1;
    dk->master = master;
    pthread_mutex_init(&dk->mu, NULL);
    dk->dir = strdup(log_dir);
    dk->path = dk->dir ? malloc(strlen(log_dir) + sizeof(CV_DATAKEYS_FILE) + 1) : NULL;
    if (!dk->path) {
        cv_datakeys_free(dk);
        return -ENOMEM;
    }
    sprintf(dk->path, "%s/%s", log_dir, CV_DATAKEYS_FILE);
    int r = load(dk, errbuf, errlen);
    if (r < 0) {
        cv_datakeys_free(dk);
        return r;
    }
    *ret = dk;
    return 0;
}

const unsigned char *cv_datakeys_get(cv_datakeys *dk, uint32_t id) {
    pthread_mutex_lock(&dk->mu);
    dek *d = find(dk, id);
    const unsigned char *k = d && !d->erased && d->have_key ? d->key : NULL;
    pthread_mutex_unlock(&dk->mu);
    return k;
}

const unsigned char *cv_datakeys_get_topic(cv_datakeys *dk, uint32_t id,
                                           const char *topic) {
    pthread_mutex_lock(&dk->mu);
    dek *d = find(dk, id);
    const unsigned char *k =
        d && !d->erased && d->have_key && strcmp(d->topic, topic) == 0 ? d->key : NULL;
    pthread_mutex_unlock(&dk->mu);
    return k;
}

const char *cv_datakeys_erased(cv_datakeys *dk, uint32_t id, int64_t *ret_at_us) {
    pthread_mutex_lock(&dk->mu);
    dek *d = find(dk, id);
    const char *t = NULL;
    if (d && d->erased) {
        t = d->topic;
        if (ret_at_us)
            *ret_at_us = d->at_us;
    }
    pthread_mutex_unlock(&dk->mu);
    return t;
}

/* Writes dk's list to the file durably (temp, fsync, rename, fsync dir). */
static int store(cv_datakeys *dk, char *errbuf, size_t errlen) {
    cv_buf b;
    cv_buf_init(&b, STORE_MAX);
    int r = cv_buf_printf(
        &b, "# chatvault channel data keys, wrapped by log.key_file: do not edit\n");
    for (size_t i = 0; i < dk->n && r == 0; i++) {
        dek *d = dk->v[i];
        if (d->erased) {
            char *u = escape(d->user ? d->user : "-");
            char *why = escape(d->reason ? d->reason : "-");
            r = u && why ? cv_buf_printf(&b, "erased %" PRIu32 " %s %" PRId64 " %s %s\n",
                                         d->id, d->topic, d->at_us, u, why)
                         : -ENOMEM;
            free(u);
            free(why);
        } else {
            char hex[2 * WRAPPED_BYTES + 1];
            sodium_bin2hex(hex, sizeof(hex), d->wrapped, WRAPPED_BYTES);
            r = cv_buf_printf(&b, "dek %" PRIu32 " %s %" PRIu32 " %" PRId64 " %s\n",
                              d->id, d->topic, d->master_id, d->at_us, hex);
        }
    }
    for (size_t i = 0; i < dk->nes && r == 0; i++) {
        const esender *e = &dk->es[i];
        char *sn = escape(e->sender), *u = escape(e->user), *why = escape(e->reason);
        r = sn && u && why ? cv_buf_printf(&b, "sender %s %s %" PRId64 " %s %s\n",
                                           e->channel, sn, e->at_us, u, why)
                           : -ENOMEM;
        free(sn);
        free(u);
        free(why);
    }
    char *tmp = malloc(strlen(dk->path) + 32);
    int fd = -1;
    if (r < 0 || !tmp) {
        r = r < 0 ? r : -ENOMEM;
        goto out;
    }
    sprintf(tmp, "%s.tmp.%ld", dk->path, (long)getpid());
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        r = -errno;
        cv_errf(errbuf, errlen, "data key store %s: cannot create %s: %s", dk->path, tmp,
                strerror(-r));
        goto out;
    }
    if ((r = cv_write_all(fd, (const char *)b.data, b.len)) < 0 ||
        (fsync(fd) < 0 && (r = -errno) < 0)) {
        cv_errf(errbuf, errlen, "data key store %s: writing %s: %s", dk->path, tmp,
                strerror(-r));
        goto unlink_tmp;
    }
    close(fd);
    fd = -1;
    if (rename(tmp, dk->path) < 0) {
        r = -errno;
        cv_errf(errbuf, errlen, "data key store %s: rename from %s: %s", dk->path, tmp,
                strerror(-r));
        goto unlink_tmp;
    }
    if ((r = cv_fsync_dir(dk->dir)) < 0)
        cv_errf(errbuf, errlen, "data key store %s: fsync of %s: %s", dk->path, dk->dir,
                strerror(-r));
    goto out;
unlink_tmp:
    if (fd >= 0)
        close(fd);
    unlink(tmp);
out:
    free(tmp);
    if (b.data)
        sodium_memzero(b.data, b.cap);
    cv_buf_release(&b);
    return r;
}

/* Locks the directory for a change (creating it when missing): the
 * descriptor to close, or a negative errno. */
static int lock_dir(const cv_datakeys *dk, char *errbuf, size_t errlen) {
    if (mkdir(dk->dir, 0700) < 0 && errno != EEXIST) {
        int e = errno;
        cv_errf(errbuf, errlen, "log directory %s: cannot create: %s", dk->dir,
                strerror(e));
        return -e;
    }
    int fd = open(dk->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int r = fd < 0 ? -errno : 0;
    while (r == 0 && flock(fd, LOCK_EX) < 0)
        if (errno != EINTR)
            r = -errno;
    if (r < 0) {
        cv_errf(errbuf, errlen, "log directory %s: cannot lock it: %s", dk->dir,
                strerror(-r));
        if (fd >= 0)
            close(fd);
        return r;
    }
    return fd;
}

static dek *current(const cv_datakeys *dk, const char *topic) {
    dek *best = NULL;
    for (size_t i = 0; i < dk->n; i++) {
        dek *d = dk->v[i];
        if (!d->erased && d->have_key && strcmp(d->topic, topic) == 0 &&
            (!best || d->id > best->id))
            best = d;
    }
    return best;
}

int cv_datakeys_current(cv_datakeys *dk, const char *topic, uint32_t *ret_id,
                        const unsigned char **ret_key, char *errbuf, size_t errlen) {
    if (!topic_ok(topic)) {
        cv_errf(errbuf, errlen, "data key store %s: bad topic name", dk->path);
        return -EINVAL;
    }
    pthread_mutex_lock(&dk->mu);
    dek *d = current(dk, topic);
    int r = 0, dfd = -1;
    if (d)
        goto found;
    if ((dfd = r = lock_dir(dk, errbuf, errlen)) < 0)
        goto out;
    if ((r = load(dk, errbuf, errlen)) < 0)
        goto out;
    if ((d = current(dk, topic)))
        goto found;
    uint32_t id = CV_DATAKEY_ID_MIN;
    for (size_t i = 0; i < dk->n; i++)
        if (dk->v[i]->id >= id)
            id = dk->v[i]->id + 1;
    if (id < CV_DATAKEY_ID_MIN) {
        cv_errf(errbuf, errlen, "data key store %s: no data key id is left", dk->path);
        r = -EOVERFLOW;
        goto out;
    }
    d = calloc(1, sizeof(*d));
    if (!d || !(d->topic = strdup(topic))) {
        dek_free(d);
        r = -ENOMEM;
        goto out;
    }
    d->id = id;
    d->master_id = cv_keyring_newest(dk->master);
    d->at_us = cv_now_us();
    crypto_aead_xchacha20poly1305_ietf_keygen(d->key);
    d->have_key = true;
    unsigned char ad[sizeof(WRAP_AD) + 4 + 256];
    size_t adlen;
    wrap_ad(ad, &adlen, d->id, d->topic);
    randombytes_buf(d->wrapped, crypto_aead_xchacha20poly1305_ietf_NPUBBYTES);
    crypto_aead_xchacha20poly1305_ietf_encrypt(
        d->wrapped + crypto_aead_xchacha20poly1305_ietf_NPUBBYTES, NULL, d->key,
        CV_KEY_BYTES, ad, adlen, NULL, d->wrapped,
        cv_keyring_get(dk->master, d->master_id));
    if ((r = add(dk, d)) < 0) {
        dek_free(d);
        goto out;
    }
    if ((r = store(dk, errbuf, errlen)) < 0) {
        dk->n--; /* not durable: never used */
        dek_free(d);
        goto out;
    }
found:
    *ret_id = d->id;
    *ret_key = d->key;
    r = 0;
out:
    if (dfd >= 0)
        close(dfd);
    pthread_mutex_unlock(&dk->mu);
    return r;
}

static int open_lock(cv_datakeys *dk, int how, char *errbuf, size_t errlen) {
    if (dk->lockfd >= 0)
        return 0;
    if (mkdir(dk->dir, 0700) < 0 && errno != EEXIST) {
        int e = errno;
        cv_errf(errbuf, errlen, "log directory %s: cannot create: %s", dk->dir,
                strerror(e));
        return -e;
    }
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dk->dir, CV_DATAKEYS_LOCK);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        int e = errno;
        cv_errf(errbuf, errlen, "lock file %s: %s", path, strerror(e));
        return -e;
    }
    int r;
    while ((r = flock(fd, how)) < 0 && errno == EINTR)
        ;
    if (r < 0) {
        r = -errno;
        if (r == -EWOULDBLOCK)
            cv_errf(errbuf, errlen,
                    "log directory %s is in use by a writer (a running broker or "
                    "verify --repair holds %s): stop it first",
                    dk->dir, path);
        else
            cv_errf(errbuf, errlen, "lock file %s: %s", path, strerror(-r));
        close(fd);
        return r == -EWOULDBLOCK ? -EBUSY : r;
    }
    dk->lockfd = fd;
    return 0;
}

int cv_datakeys_lock_writer(cv_datakeys *dk, char *errbuf, size_t errlen) {
    return open_lock(dk, LOCK_SH, errbuf, errlen);
}

int cv_datakeys_erase(cv_datakeys *dk, const char *topic, const char *user,
                      const char *reason, bool dry_run, cv_datakeys_erasure *ret,
                      char *errbuf, size_t errlen) {
    memset(ret, 0, sizeof(*ret));
    int r = 0, dfd = -1;
    if (!dry_run && (r = open_lock(dk, LOCK_EX | LOCK_NB, errbuf, errlen)) < 0)
        return r;
    pthread_mutex_lock(&dk->mu);
    if (!dry_run && (dfd = r = lock_dir(dk, errbuf, errlen)) < 0)
        goto out;
    if ((r = load(dk, errbuf, errlen)) < 0)
        goto out;
    ret->ids = calloc(dk->n + 1, sizeof(uint32_t));
    if (!ret->ids) {
        r = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < dk->n; i++) {
        dek *d = dk->v[i];
        if (strcmp(d->topic, topic) != 0)
            continue;
        if (d->erased) {
            ret->already++;
            continue;
        }
        ret->ids[ret->n++] = d->id;
    }
    if (dry_run || ret->n == 0)
        goto out;
    int64_t now = cv_now_us();
    for (size_t i = 0; i < dk->n; i++) {
        dek *d = dk->v[i];
        if (strcmp(d->topic, topic) != 0 || d->erased)
            continue;
        d->erased = true;
        d->at_us = now;
        d->user = strndup(user ? user : "-", TEXT_MAX);
        d->reason = strndup(reason ? reason : "-", TEXT_MAX);
        if (!d->user || !d->reason) {
            r = -ENOMEM;
            goto out;
        }
        d->have_key = false;
        sodium_memzero(d->key, sizeof(d->key));
        sodium_memzero(d->wrapped, sizeof(d->wrapped));
    }
    r = store(dk, errbuf, errlen);
out:
    if (dfd >= 0)
        close(dfd);
    pthread_mutex_unlock(&dk->mu);
    if (r < 0) {
        free(ret->ids);
        memset(ret, 0, sizeof(*ret));
    }
    return r;
}

int cv_datakeys_erase_sender(cv_datakeys *dk, const char *channel, const char *sender,
                             const char *user, const char *reason, bool dry_run,
                             bool *ret_new, char *errbuf, size_t errlen) {
    int r = 0, dfd = -1;
    *ret_new = false;
    if (channel && !topic_ok(channel)) {
        cv_errf(errbuf, errlen, "data key store %s: bad channel name", dk->path);
        return -EINVAL;
    }
    pthread_mutex_lock(&dk->mu);
    if (!dry_run && (dfd = r = lock_dir(dk, errbuf, errlen)) < 0)
        goto out;
    if ((r = load(dk, errbuf, errlen)) < 0)
        goto out;
    const char *ch = channel ? channel : "*";
    esender *have = find_sender(dk, ch, sender);
    if (have && (strcmp(have->channel, "*") == 0 || strcmp(have->channel, ch) == 0))
        goto out;
    *ret_new = true;
    if (dry_run)
        goto out;
    esender e = {
        .channel = strdup(ch),
        .sender = strndup(sender, TEXT_MAX),
        .user = strndup(user ? user : "-", TEXT_MAX),
        .reason = strndup(reason ? reason : "-", TEXT_MAX),
        .at_us = cv_now_us(),
    };
    if ((r = add_sender(dk, e)) == 0)
        r = store(dk, errbuf, errlen);
out:
    if (dfd >= 0)
        close(dfd);
    pthread_mutex_unlock(&dk->mu);
    return r;
}

bool cv_datakeys_sender_erased(cv_datakeys *dk, const char *channel, const char *sender) {
    pthread_mutex_lock(&dk->mu);
    bool b = find_sender(dk, channel, sender) != NULL;
    pthread_mutex_unlock(&dk->mu);
    return b;
}

bool cv_datakeys_any_sender(cv_datakeys *dk) {
    pthread_mutex_lock(&dk->mu);
    bool b = dk->nes > 0;
    pthread_mutex_unlock(&dk->mu);
    return b;
}
