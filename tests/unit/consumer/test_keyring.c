/*
 * Tests for consumer/keyring.c: generation, loading, rotation and every
 * refusal (missing, readable by others, malformed), on real files.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "keyring.h"
#include "tap.h"

static char dir[256];

static void write_file(const char *path, const char *text, mode_t mode) {
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text)) {
        perror(path);
        exit(2);
    }
    fchmod(fd, mode);
    close(fd);
}

static void test_generate_and_load(void) {
    char path[512], err[512];
    snprintf(path, sizeof(path), "%s/log.key", dir);
    uint32_t id = 0;
    TAP_IS_INT(cv_keyring_generate(path, &id, err, sizeof(err)), 0,
               "keygen creates a new key file");
    TAP_IS_INT(id, 1, "the first key has id 1");
    struct stat st;
    stat(path, &st);
    TAP_IS_INT(st.st_mode & 0777, 0600, "the key file is created 0600");
    TAP_IS_INT(cv_keyring_generate(path, &id, err, sizeof(err)), 0,
               "keygen appends a second key");
    TAP_IS_INT(id, 2, "the second key has id 2");
    cv_keyring *kr = NULL;
    TAP_IS_INT(cv_keyring_load(path, &kr, err, sizeof(err)), 0,
               "the generated file loads");
    TAP_IS_INT(cv_keyring_count(kr), 2, "it holds two keys");
    TAP_IS_INT(cv_keyring_newest(kr), 2, "the newest key is id 2");
    tap_ok(cv_keyring_get(kr, 1) && cv_keyring_get(kr, 2) &&
               memcmp(cv_keyring_get(kr, 1), cv_keyring_get(kr, 2), CV_KEY_BYTES) != 0,
           "both keys are found by id and differ");
    tap_ok(cv_keyring_get(kr, 3) == NULL, "an unknown id is not found");
    TAP_IS_INT(cv_keyring_id_at(kr, 0), 1, "keys are listed oldest first");
    kr = cv_keyring_free(kr);
    tap_ok(kr == NULL && cv_keyring_free(NULL) == NULL,
           "free returns NULL and accepts NULL");
}

static void test_refusals(void) {
    char path[512], err[512];
    cv_keyring *kr = NULL;
    snprintf(path, sizeof(path), "%s/missing.key", dir);
    TAP_IS_INT(cv_keyring_load(path, &kr, err, sizeof(err)), -ENOENT,
               "a missing key file is refused");
    tap_ok(strstr(err, path) && strstr(err, "does not exist") && !strchr(err, '\n'),
           "the error names the missing path on one line: %s", err);

    snprintf(path, sizeof(path), "%s/open.key", dir);
    write_file(path,
               "key 1 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
               0644);
    TAP_IS_INT(cv_keyring_load(path, &kr, err, sizeof(err)), -EACCES,
               "a world-readable key file is refused");
    tap_ok(strstr(err, path) && strstr(err, "0644"), "the error names path and mode: %s",
           err);
    chmod(path, 0640);
    TAP_IS_INT(cv_keyring_load(path, &kr, err, sizeof(err)), -EACCES,
               "a group-readable key file is refused");
    uint32_t id;
    TAP_IS_INT(cv_keyring_generate(path, &id, err, sizeof(err)), -EACCES,
               "keygen refuses to extend a group-readable key file");
    chmod(path, 0400);
    TAP_IS_INT(cv_keyring_load(path, &kr, err, sizeof(err)), 0, "a 0400 key file loads");
    kr = cv_keyring_free(kr);

    static const struct {
        const char *text, *name, *want;
    } bad[] = {
        {"key 1 0011\n", "a short key", ":1 is malformed"},
        {"# c\nkey 1 zz112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
         "a key with non-hex digits", ":2 is malformed"},
        {"key 0 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
         "key id 0", ":1 is malformed"},
        {"key 2 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n"
         "key 1 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
         "decreasing key ids", ":2 is malformed"},
        {"secret 00112233\n", "a line that is not a key", ":1 is malformed"},
        {"# only a comment\n", "a file without keys", "holds no key"},
    };
    snprintf(path, sizeof(path), "%s/bad.key", dir);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        write_file(path, bad[i].text, 0600);
        err[0] = '\0';
        int r = cv_keyring_load(path, &kr, err, sizeof(err));
        tap_ok(r == -EINVAL && strstr(err, path) && strstr(err, bad[i].want),
               "malformed key file refused: %s (%s)", bad[i].name, err);
    }
}

static void test_concurrent_keygen(void) {
    char path[512], err[512];
    snprintf(path, sizeof(path), "%s/busy.key", dir);
    enum { N = 8 };
    pid_t pids[N];
    fflush(stdout);
    for (int i = 0; i < N; i++) {
        pids[i] = fork();
        if (pids[i] == 0) {
            uint32_t id;
            _exit(cv_keyring_generate(path, &id, err, sizeof(err)) < 0);
        }
    }
    int failed = 0;
    for (int i = 0; i < N; i++) {
        int st;
        waitpid(pids[i], &st, 0);
        failed += !WIFEXITED(st) || WEXITSTATUS(st) != 0;
    }
    cv_keyring *kr = NULL;
    int r = cv_keyring_load(path, &kr, err, sizeof(err));
    tap_ok(failed == 0 && r == 0 && cv_keyring_count(kr) == N &&
               cv_keyring_newest(kr) == N,
           "%d keygens at once add %d keys with ids 1..%d", N, N, N);
    cv_keyring_free(kr);
}

int main(void) {
    snprintf(dir, sizeof(dir), "/tmp/cv-test-keyring-XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 2;
    }
    test_generate_and_load();
    test_refusals();
    test_concurrent_keygen();
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        printf("# could not remove %s\n", dir);
    return tap_done();
}
