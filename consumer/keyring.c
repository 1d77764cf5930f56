/*
 * keyring — see keyring.h for the key file format.
 *
 * The file is read through one descriptor and its mode checked with fstat on
 * that descriptor, so the checked file is the file read. Every buffer that
 * held key material is wiped with sodium_memzero before it is freed.
 */
#include "keyring.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "datakeys.h"
#include "util.h"

#define KEYFILE_MAX (1u << 20) /* a key line is ~80 bytes: 13,000 keys */

typedef struct key {
    uint32_t id;
    unsigned char bytes[CV_KEY_BYTES];
} key;

#define MASTER_ID_MAX (CV_DATAKEY_ID_MIN - 1)
#define STORES_MAX 64

struct cv_keyring {
    key *keys;
    size_t n, cap;
    cv_datakeys *dk[STORES_MAX];
    size_t ndk;
};

cv_keyring *cv_keyring_free(cv_keyring *keys) {
    if (!keys)
        return NULL;
    if (keys->keys) {
        sodium_memzero(keys->keys, keys->cap * sizeof(key));
        free(keys->keys);
    }
    for (size_t i = 0; i < keys->ndk; i++)
        cv_datakeys_free(keys->dk[i]);
    free(keys);
    return NULL;
}

static int ring_add(cv_keyring *kr, uint32_t id, const unsigned char *bytes) {
    if (kr->n == kr->cap) {
        size_t ncap = kr->cap ? kr->cap * 2 : 4;
        key *nk = calloc(ncap, sizeof(key));
        if (!nk)
            return -ENOMEM;
        if (kr->keys) {
            memcpy(nk, kr->keys, kr->n * sizeof(key));
            sodium_memzero(kr->keys, kr->cap * sizeof(key));
            free(kr->keys);
        }
        kr->keys = nk;
        kr->cap = ncap;
    }
    kr->keys[kr->n].id = id;
    memcpy(kr->keys[kr->n].bytes, bytes, CV_KEY_BYTES);
    kr->n++;
    return 0;
}

/* Parses one "key ID HEX" line (NUL-terminated, no newline). */
static int parse_line(char *line, uint32_t *ret_id, unsigned char *ret_key,
                      const char **ret_why) {
    char *p = line;
    if (strncmp(p, "key", 3) != 0 || (p[3] != ' ' && p[3] != '\t')) {
        *ret_why = "expected \"key ID HEX\"";
        return -EINVAL;
    }
    p += 4;
    if (*p < '1' || *p > '9') {
        *ret_why = "key id must be a decimal number from 1";
        return -EINVAL;
    }
    uint64_t id = 0;
    while (*p >= '0' && *p <= '9') {
        id = id * 10 + (uint64_t)(*p++ - '0');
        if (id > MASTER_ID_MAX) {
            *ret_why = "key id is above 2147483647 (higher ids name channel data keys)";
            return -EINVAL;
        }
    }
    if (*p != ' ' && *p != '\t') {
        *ret_why = "expected one space between key id and key";
        return -EINVAL;
    }
    p++;
    size_t hexlen = strlen(p);
    while (hexlen &&
           (p[hexlen - 1] == ' ' || p[hexlen - 1] == '\t' || p[hexlen - 1] == '\r'))
        hexlen--;
    size_t got = 0;
    const char *end = NULL;
    if (hexlen != 2 * CV_KEY_BYTES ||
        sodium_hex2bin(ret_key, CV_KEY_BYTES, p, hexlen, NULL, &got, &end) != 0 ||
        got != CV_KEY_BYTES) {
        *ret_why = "key must be 64 hex digits (32 bytes)";
        return -EINVAL;
    }
    *ret_id = (uint32_t)id;
    return 0;
}

/* Reads and parses an open key file; `path` is for messages. */
static int load_fd(int fd, const char *path, cv_keyring **ret_keys, char *errbuf,
                   size_t errlen) {
    int64_t size;
    int r = cv_private_file_check(fd, "key file", path, &size, errbuf, errlen);
    if (r < 0)
        return r;
    if (size > (int64_t)KEYFILE_MAX) {
        cv_errf(errbuf, errlen, "key file %s is larger than %u bytes", path, KEYFILE_MAX);
        return -EINVAL;
    }
    size_t cap = (size_t)size + 1;
    char *text = malloc(cap);
    if (!text)
        return -ENOMEM;
    size_t len = 0;
    for (;;) {
        if (len == cap - 1)
            break;
        ssize_t n = read(fd, text + len, cap - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            r = -errno;
            cv_errf(errbuf, errlen, "key file %s: read: %s", path, strerror(-r));
            goto out;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    text[len] = '\0';

    cv_keyring *kr = calloc(1, sizeof(*kr));
    if (!kr) {
        r = -ENOMEM;
        goto out;
    }
    int lineno = 0;
    char *line = text;
    while (line < text + len) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        lineno++;
        char *p = line;
        while (*p == ' ' || *p == '\t' || *p == '\r')
            p++;
        if (*p && *p != '#') {
            uint32_t id;
            unsigned char kb[CV_KEY_BYTES];
            const char *why = NULL;
            r = parse_line(p, &id, kb, &why);
            if (r == 0 && kr->n && id <= kr->keys[kr->n - 1].id) {
                why = "key ids must increase down the file";
                r = -EINVAL;
            }
            if (r == 0)
                r = ring_add(kr, id, kb);
            sodium_memzero(kb, sizeof(kb));
            if (r < 0) {
                if (why)
                    cv_errf(errbuf, errlen, "key file %s:%d is malformed: %s", path,
                            lineno, why);
                cv_keyring_free(kr);
                goto out;
            }
        }
        if (!nl)
            break;
        line = nl + 1;
    }
    if (kr->n == 0) {
        cv_errf(errbuf, errlen,
                "key file %s holds no key (create one with "
                "chatvault keygen)",
                path);
        cv_keyring_free(kr);
        r = -EINVAL;
        goto out;
    }
    *ret_keys = kr;
out:
    sodium_memzero(text, cap);
    free(text);
    return r;
}

int cv_keyring_load(const char *path, cv_keyring **ret_keys, char *errbuf,
                    size_t errlen) {
    if (sodium_init() < 0) {
        cv_errf(errbuf, errlen, "libsodium failed to initialise");
        return -EIO;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT)
            cv_errf(errbuf, errlen,
                    "key file %s does not exist (create it with chatvault "
                    "keygen)",
                    path);
        else
            cv_errf(errbuf, errlen, "key file %s: %s", path, strerror(e));
        return -e;
    }
    int r = load_fd(fd, path, ret_keys, errbuf, errlen);
    close(fd);
    return r;
}

/* Fsyncs the directory holding `path`. */
static int fsync_parent(const char *path) {
    char *copy = strdup(path);
    if (!copy)
        return -ENOMEM;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(copy);
    if (fd < 0)
        return -errno;
    int r = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    return r;
}

/* cv_keyring_generate with the directory locked. */
static int generate_locked(const char *path, uint32_t *ret_id, char *errbuf,
                           size_t errlen) {
    cv_keyring *kr = NULL;
    int r = cv_keyring_load(path, &kr, errbuf, errlen);
    if (r == -ENOENT) {
        kr = calloc(1, sizeof(*kr));
        if (!kr)
            return -ENOMEM;
    } else if (r < 0) {
        return r;
    }
    uint32_t id = kr->n ? kr->keys[kr->n - 1].id : 0;
    if (id == MASTER_ID_MAX) {
        cv_errf(errbuf, errlen,
                "key file %s: key id 2147483647 is taken; no "
                "higher master key id exists",
                path);
        cv_keyring_free(kr);
        return -EOVERFLOW;
    }
    id++;
    unsigned char kb[CV_KEY_BYTES];
    crypto_aead_xchacha20poly1305_ietf_keygen(kb);
    r = ring_add(kr, id, kb);
    sodium_memzero(kb, sizeof(kb));
    if (r < 0) {
        cv_keyring_free(kr);
        return r;
    }

    size_t cap = 128 + kr->n * (16 + 2 * CV_KEY_BYTES);
    char *text = malloc(cap);
    char *tmp = malloc(strlen(path) + 32);
    int fd = -1;
    if (!text || !tmp) {
        r = -ENOMEM;
        goto out;
    }
    size_t len = (size_t)snprintf(
        text, cap, "# chatvault log keys: keep secret, mode 0600 (chatvault keygen)\n");
    for (size_t i = 0; i < kr->n; i++) {
        len +=
            (size_t)snprintf(text + len, cap - len, "key %" PRIu32 " ", kr->keys[i].id);
        sodium_bin2hex(text + len, cap - len, kr->keys[i].bytes, CV_KEY_BYTES);
        len += 2 * CV_KEY_BYTES;
        text[len++] = '\n';
    }
    sprintf(tmp, "%s.tmp.%ld", path, (long)getpid());
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        r = -errno;
        cv_errf(errbuf, errlen, "key file %s: cannot create %s: %s", path, tmp,
                strerror(-r));
        goto out;
    }
    if (fchmod(fd, 0600) < 0 || (r = cv_write_all(fd, text, len)) < 0 || fsync(fd) < 0) {
        if (r == 0)
            r = -errno;
        cv_errf(errbuf, errlen, "key file %s: writing %s: %s", path, tmp, strerror(-r));
        goto unlink_tmp;
    }
    if (close(fd) < 0) {
        fd = -1;
        r = -errno;
        cv_errf(errbuf, errlen, "key file %s: closing %s: %s", path, tmp, strerror(-r));
        goto unlink_tmp;
    }
    fd = -1;
    if (rename(tmp, path) < 0) {
        r = -errno;
        cv_errf(errbuf, errlen, "key file %s: rename from %s: %s", path, tmp,
                strerror(-r));
        goto unlink_tmp;
    }
    if ((r = fsync_parent(path)) < 0) {
        cv_errf(errbuf, errlen, "key file %s: fsync of its directory: %s", path,
                strerror(-r));
        goto out;
    }
    *ret_id = id;
    goto out;

unlink_tmp:
    if (fd >= 0)
        close(fd);
    fd = -1;
    unlink(tmp);
out:
    if (text) {
        sodium_memzero(text, cap);
        free(text);
    }
    free(tmp);
    cv_keyring_free(kr);
    return r;
}

int cv_keyring_generate(const char *path, uint32_t *ret_id, char *errbuf, size_t errlen) {
    if (sodium_init() < 0) {
        cv_errf(errbuf, errlen, "libsodium failed to initialise");
        return -EIO;
    }
    /* Two keygens at once would each rename their own copy into place and
     * one new key would be lost: they take turns on a lock of the
     * directory. */
    char *copy = strdup(path);
    if (!copy)
        return -ENOMEM;
    const char *dir = dirname(copy);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        int e = errno;
        cv_errf(errbuf, errlen, "key file %s: directory %s: %s", path, dir, strerror(e));
        free(copy);
        return -e;
    }
    free(copy);
    int r;
    while ((r = flock(dfd, LOCK_EX)) < 0 && errno == EINTR)
        ;
    if (r < 0) {
        r = -errno;
        cv_errf(errbuf, errlen, "key file %s: cannot lock its directory: %s", path,
                strerror(-r));
        close(dfd);
        return r;
    }
    r = generate_locked(path, ret_id, errbuf, errlen);
    close(dfd); /* releases the lock */
    return r;
}

const unsigned char *cv_keyring_get(const cv_keyring *keys, uint32_t key_id) {
    if (key_id >= CV_DATAKEY_ID_MIN) {
        for (size_t i = 0; i < keys->ndk; i++) {
            const unsigned char *k = cv_datakeys_get(keys->dk[i], key_id);
            if (k)
                return k;
        }
        return NULL;
    }
    size_t lo = 0, hi = keys->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (keys->keys[mid].id == key_id)
            return keys->keys[mid].bytes;
        if (keys->keys[mid].id < key_id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

uint32_t cv_keyring_newest(const cv_keyring *keys) {
    return keys->n ? keys->keys[keys->n - 1].id : 0;
}

size_t cv_keyring_count(const cv_keyring *keys) {
    return keys->n;
}

uint32_t cv_keyring_id_at(const cv_keyring *keys, size_t i) {
    return i < keys->n ? keys->keys[i].id : 0;
}

int cv_keyring_attach(cv_keyring *keys, cv_datakeys *dk) {
    if (keys->ndk == STORES_MAX)
        return -E2BIG;
    keys->dk[keys->ndk++] = dk;
    return 0;
}

cv_datakeys *cv_keyring_data_keys(const cv_keyring *keys, const char *log_dir) {
    for (size_t i = 0; i < keys->ndk; i++)
        if (strcmp(cv_datakeys_dir(keys->dk[i]), log_dir) == 0)
            return keys->dk[i];
    return NULL;
}

const char *cv_keyring_erased(const cv_keyring *keys, uint32_t key_id,
                              int64_t *ret_at_us) {
    for (size_t i = 0; key_id >= CV_DATAKEY_ID_MIN && i < keys->ndk; i++) {
        const char *t = cv_datakeys_erased(keys->dk[i], key_id, ret_at_us);
        if (t)
            return t;
    }
    return NULL;
}

bool cv_keyring_sender_erased(const cv_keyring *keys, const char *channel,
                              const char *sender) {
    for (size_t i = 0; keys && i < keys->ndk; i++)
        if (cv_datakeys_sender_erased(keys->dk[i], channel, sender))
            return true;
    return false;
}

bool cv_keyring_any_sender_erased(const cv_keyring *keys) {
    for (size_t i = 0; keys && i < keys->ndk; i++)
        if (cv_datakeys_any_sender(keys->dk[i]))
            return true;
    return false;
}

const unsigned char *cv_keyring_data_key(const cv_keyring *keys, uint32_t key_id,
                                         const char *topic, size_t n) {
    for (size_t i = 0; key_id >= CV_DATAKEY_ID_MIN && i < keys->ndk; i++) {
        const unsigned char *k = cv_datakeys_get_topic(keys->dk[i], key_id, topic);
        if (k && n-- == 0)
            return k;
    }
    return NULL;
}

bool cv_keyring_erased_for(const cv_keyring *keys, uint32_t key_id, const char *topic) {
    for (size_t i = 0; key_id >= CV_DATAKEY_ID_MIN && i < keys->ndk; i++) {
        const char *t = cv_datakeys_erased(keys->dk[i], key_id, NULL);
        if (t && strcmp(t, topic) == 0)
            return true;
    }
    return false;
}
