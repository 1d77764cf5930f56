/*
 * keyring — the keys of the encrypted log, loaded from log.key_file.
 *
 * The key file is text, one key per line, so an operator can read which key
 * ids it holds without tools (the key bytes themselves are secret):
 *
 *     # chatvault log keys: keep secret, mode 0600 (chatvault keygen)
 *     key 1 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
 *     key 2 60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752
 *
 * Blank lines and lines starting with '#' are ignored. A key line is the
 * word "key", the key id (decimal, 1 .. 2147483647; higher ids name channel
 * data keys, see datakeys.h) and 64 lowercase or
 * uppercase hex digits (32 bytes, an XChaCha20-Poly1305 key), separated by
 * single spaces or tabs. Key ids increase strictly down the file; the last
 * one is the newest and is used for new log segments. Older keys stay so old
 * segments remain readable after a rotation.
 *
 * The file must be a regular file with no permission bits for group or
 * others (0600 or 0400); anything else is refused.
 */
#ifndef CV_KEYRING_H
#define CV_KEYRING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CV_KEY_BYTES 32

typedef struct cv_keyring cv_keyring;

/* Loads the key file at `path`. Fails with -ENOENT (missing), -EACCES
 * (group/other permission bits set; the error names the mode found), -EINVAL
 * (malformed; the error names path and line) or another negative errno; the
 * one-line error in errbuf names the path. On success the caller owns
 * *ret_keys and frees it with cv_keyring_free(). */
int cv_keyring_load(const char *path, cv_keyring **ret_keys, char *errbuf, size_t errlen);

/* Appends a new random key to the key file at `path` with the next key id
 * (1 for a new file), creating the file with mode 0600. The file is replaced
 * durably: temp file, fsync, rename, fsync of the directory. An existing file
 * is checked as cv_keyring_load() does first. Stores the new id in *ret_id. */
int cv_keyring_generate(const char *path, uint32_t *ret_id, char *errbuf, size_t errlen);

/* The 32-byte key with id `key_id`, or NULL when the ring has no such key.
 * The pointer lives as long as the ring. */
const unsigned char *cv_keyring_get(const cv_keyring *keys, uint32_t key_id);

/* Id of the newest key (the highest id). A loaded ring has at least one. */
uint32_t cv_keyring_newest(const cv_keyring *keys);

/* Number of keys and the id of the i-th (oldest first). */
size_t cv_keyring_count(const cv_keyring *keys);
uint32_t cv_keyring_id_at(const cv_keyring *keys, size_t i);

/* Data keys (datakeys.h): a ring may carry the data key stores of log
 * directories, so that every reader finds a channel's key by the key id in
 * a segment header like a master key. Ids from 2147483648 (CV_DATAKEY_ID_MIN)
 * are data key ids; master key ids are below. */
struct cv_datakeys;

/* Attaches a store: the ring owns it from now on and frees it. */
int cv_keyring_attach(cv_keyring *keys, struct cv_datakeys *dk);

/* The store attached for log directory `log_dir`, or NULL. */
struct cv_datakeys *cv_keyring_data_keys(const cv_keyring *keys, const char *log_dir);

/* Stores of several broker instances (log cat --log-dir A --log-dir B) number
 * their keys alike, so a data key id alone does not name one key: the n-th
 * (0, 1, ...) live data key of id `key_id` and topic `topic` among the
 * attached stores, or NULL past the last. The reader takes the one whose
 * key check matches the segment's. */
const unsigned char *cv_keyring_data_key(const cv_keyring *keys, uint32_t key_id,
                                         const char *topic, size_t n);

/* Whether an attached store erased data key `key_id` of `topic`. */
bool cv_keyring_erased_for(const cv_keyring *keys, uint32_t key_id, const char *topic);

/* Whether data key `key_id` was erased in an attached store: its topic and
 * *ret_at_us, or NULL. */
const char *cv_keyring_erased(const cv_keyring *keys, uint32_t key_id,
                              int64_t *ret_at_us);

/* Whether `sender` was erased in `channel` in an attached store
 * (cv_datakeys_erase_sender). any_sender: whether any store records one. */
bool cv_keyring_sender_erased(const cv_keyring *keys, const char *channel,
                              const char *sender);
bool cv_keyring_any_sender_erased(const cv_keyring *keys);

/* Wipes the keys (sodium_memzero) and frees the ring. Accepts NULL; returns
 * NULL. */
cv_keyring *cv_keyring_free(cv_keyring *keys);

#endif
