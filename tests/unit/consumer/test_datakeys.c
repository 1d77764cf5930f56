/*
 * Tests for consumer/datakeys.c: creating a channel's key durably, reading
 * it back through the keyring, the wrapping's binding to its master key and
 * topic, erasure (record, idempotence, a fresh key afterwards) and the
 * writers' lock, on real files.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "datakeys.h"
#include "keyring.h"
#include "tap.h"

static char dir[256];

static char *slurp(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    static char buf[65536];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static void spit(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0) {
        perror(path);
        exit(2);
    }
    fclose(f);
}

static cv_keyring *ring(const char *name) {
    char path[512], err[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    uint32_t id;
    cv_keyring *kr = NULL;
    if (cv_keyring_generate(path, &id, err, sizeof(err)) < 0 ||
        cv_keyring_load(path, &kr, err, sizeof(err)) < 0) {
        printf("# %s\n", err);
        exit(2);
    }
    return kr;
}

/* A keyring of `key` with the store of `logdir` attached. */
static cv_keyring *attached(const char *key, const char *logdir) {
    char path[512], err[512];
    snprintf(path, sizeof(path), "%s/%s", dir, key);
    cv_keyring *kr = NULL;
    cv_datakeys *dk = NULL;
    if (cv_keyring_load(path, &kr, err, sizeof(err)) < 0 ||
        cv_datakeys_open(logdir, kr, &dk, err, sizeof(err)) < 0 ||
        cv_keyring_attach(kr, dk) < 0) {
        printf("# %s\n", err);
        exit(2);
    }
    return kr;
}

int main(void) {
    snprintf(dir, sizeof(dir), "/tmp/cv-test-datakeys-XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 2;
    }
    char logdir[512], store[600], err[512];
    snprintf(logdir, sizeof(logdir), "%s/log", dir);
    snprintf(store, sizeof(store), "%s/" CV_DATAKEYS_FILE, logdir);
    cv_keyring_free(ring("master.key"));
    cv_keyring_free(ring("other.key"));

    cv_keyring *kr = attached("master.key", logdir);
    cv_datakeys *dk = cv_keyring_data_keys(kr, logdir);
    tap_ok(dk != NULL, "the store is found by its log directory");
    uint32_t a = 0, a2 = 0, b = 0;
    const unsigned char *ka = NULL, *ka2 = NULL, *kb = NULL;
    TAP_IS_INT(cv_datakeys_current(dk, "chat.a", &a, &ka, err, sizeof(err)), 0,
               "a first key for chat.a");
    TAP_IS_INT(a, CV_DATAKEY_ID_MIN, "its id is 2^31");
    struct stat st;
    tap_ok(stat(store, &st) == 0 && (st.st_mode & 0777) == 0600,
           "the store is on disk, mode 0600, before the key is used");
    cv_datakeys_current(dk, "chat.a", &a2, &ka2, err, sizeof(err));
    tap_ok(a2 == a && ka2 == ka, "the same key the second time");
    cv_datakeys_current(dk, "chat.b", &b, &kb, err, sizeof(err));
    TAP_IS_INT(b, CV_DATAKEY_ID_MIN + 1, "another topic, the next id");
    unsigned char copy_a[CV_KEY_BYTES];
    memcpy(copy_a, ka, CV_KEY_BYTES);
    tap_ok(cv_keyring_get(kr, a) == ka, "the keyring finds a data key by id");
    cv_keyring_free(kr);

    kr = attached("master.key", logdir);
    const unsigned char *k = cv_keyring_get(kr, a);
    tap_ok(k && memcmp(k, copy_a, CV_KEY_BYTES) == 0,
           "reopened: the key unwraps to the same bytes");
    cv_keyring_free(kr);

    kr = attached("other.key", logdir);
    tap_ok(cv_keyring_get(kr, a) == NULL, "another master key does not unwrap it");
    tap_ok(cv_keyring_erased(kr, a, NULL) == NULL, "... and it is not 'erased'");
    cv_keyring_free(kr);

    /* The wrapping binds the topic: swapping the topics of two lines fails. */
    char saved[65536];
    snprintf(saved, sizeof(saved), "%s", slurp(store));
    char *swapped = strdup(saved), *pa = strstr(swapped, " chat.a "),
         *pb = strstr(swapped, " chat.b ");
    pa[6] = 'b';
    pb[6] = 'a';
    spit(store, swapped);
    free(swapped);
    kr = attached("master.key", logdir);
    tap_ok(cv_keyring_get(kr, a) == NULL && cv_keyring_get(kr, b) == NULL,
           "a wrapped key moved to another topic does not unwrap");
    cv_keyring_free(kr);
    spit(store, saved);
    chmod(store, 0600);

    /* Erasure, and the writers' lock. */
    cv_keyring *writer = attached("master.key", logdir);
    TAP_IS_INT(
        cv_datakeys_lock_writer(cv_keyring_data_keys(writer, logdir), err, sizeof(err)),
        0, "a writer takes the shared lock");
    kr = attached("master.key", logdir);
    dk = cv_keyring_data_keys(kr, logdir);
    cv_datakeys_erasure er;
    TAP_IS_INT(cv_datakeys_erase(dk, "chat.a", "alice", "asked to", false, &er, err,
                                 sizeof(err)),
               -EBUSY, "erase refuses while a writer runs");
    tap_ok(strstr(err, "in use by a writer") != NULL, "... and says so: %s", err);
    TAP_IS_INT(
        cv_datakeys_erase(dk, "chat.a", "alice", "asked to", true, &er, err, sizeof(err)),
        0, "a dry run needs no lock");
    tap_ok(er.n == 1 && er.ids[0] == a, "the dry run names the key");
    free(er.ids);
    tap_ok(strcmp(slurp(store), saved) == 0, "the dry run changes nothing");
    cv_keyring_free(writer);
    TAP_IS_INT(cv_datakeys_erase(dk, "chat.a", "alice", "asked to", false, &er, err,
                                 sizeof(err)),
               0, "erase once the writer stopped");
    tap_ok(er.n == 1 && er.already == 0, "one key destroyed");
    free(er.ids);
    tap_ok(cv_keyring_get(kr, a) == NULL, "the key is gone from memory");
    cv_keyring_free(kr);

    const char *text = slurp(store);
    tap_ok(strstr(text, "erased 2147483648 chat.a ") &&
               strstr(text, " alice asked%20to\n") && !strstr(text, "dek 2147483648 "),
           "the store holds an erasure record instead of the key");
    kr = attached("master.key", logdir);
    int64_t at = 0;
    const char *t = cv_keyring_erased(kr, a, &at);
    tap_ok(t && strcmp(t, "chat.a") == 0 && at > 0, "reopened: the key reads as erased");
    tap_ok(cv_keyring_get(kr, b) != NULL, "the other topic's key is untouched");
    dk = cv_keyring_data_keys(kr, logdir);
    TAP_IS_INT(
        cv_datakeys_erase(dk, "chat.a", "alice", "-", false, &er, err, sizeof(err)), 0,
        "erasing again succeeds");
    tap_ok(er.n == 0 && er.already == 1, "... and destroys nothing more");
    free(er.ids);
    cv_datakeys_current(dk, "chat.a", &a2, &ka2, err, sizeof(err));
    TAP_IS_INT(a2, CV_DATAKEY_ID_MIN + 2, "after erasure a fresh key with a new id");
    tap_ok(memcmp(ka2, copy_a, CV_KEY_BYTES) != 0, "... and new bytes");
    cv_keyring_free(kr);

    /* Two instances' stores number their keys alike: both are candidates. */
    char logdir2[600];
    snprintf(logdir2, sizeof(logdir2), "%s/log2", dir);
    kr = attached("master.key", logdir);
    cv_datakeys *dk2 = NULL;
    cv_datakeys_open(logdir2, kr, &dk2, err, sizeof(err));
    cv_keyring_attach(kr, dk2);
    uint32_t x = 0;
    const unsigned char *kx = NULL;
    cv_datakeys_current(dk2, "chat.b", &x, &kx, err, sizeof(err));
    TAP_IS_INT(x, CV_DATAKEY_ID_MIN, "a second store starts at the same id");
    tap_ok(cv_keyring_data_key(kr, x, "chat.b", 0) == kx &&
               cv_keyring_data_key(kr, x, "chat.b", 1) == NULL,
           "its id names its own topic's key only");
    tap_ok(cv_keyring_erased_for(kr, a, "chat.a") &&
               !cv_keyring_erased_for(kr, a, "chat.b"),
           "erased is per topic");
    cv_keyring_free(kr);

    /* A master key id in the data key range is refused. */
    char mpath[600];
    snprintf(mpath, sizeof(mpath), "%s/high.key", dir);
    int fd = open(mpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    const char *line =
        "key 2147483648 "
        "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";
    if (fd < 0 || write(fd, line, strlen(line)) != (ssize_t)strlen(line))
        return 2;
    close(fd);
    kr = NULL;
    TAP_IS_INT(cv_keyring_load(mpath, &kr, err, sizeof(err)), -EINVAL,
               "a master key id of 2^31 or above is refused");

    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        printf("# could not remove %s\n", dir);
    return tap_done();
}
