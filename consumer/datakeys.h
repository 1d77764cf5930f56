/*
 * datakeys — the per-channel data keys of the encrypted log, so that one
 * channel can be erased by destroying its key (crypto-shredding) without
 * rewriting any other channel's segments. consumer/applog/FORMAT.md
 * "Data keys and erasure" is the specification.
 *
 * Every log directory (log.dir) has at most one store, the file
 * <log.dir>/datakeys (mode 0600, text, replaced durably on each change):
 *
 *     # chatvault channel data keys, wrapped by log.key_file: do not edit
 *     dek 2147483649 chat.general 2 1765123456789012 <wrapped key, 144 hex>
 *     erased 2147483648 chat.gone 1765123000000000 alice too%20old
 *
 * A "dek" line is a live data key: id, topic, id of the master key (of
 * log.key_file) that wraps it, creation time (Unix us) and the wrapped key
 * (XChaCha20-Poly1305 nonce 24 ‖ ciphertext 32 ‖ tag 16 under the master
 * key, additional data "chatvault data key" ‖ 0 ‖ id (4, big-endian) ‖
 * topic). An "erased" line is what is left of an erased one: id, topic,
 * erasure time, the OS user and the reason (percent-escaped). A "sender"
 * line records an erased sender (see cv_datakeys_erase_sender). Data key ids
 * start at CV_DATAKEY_ID_MIN, above every master key id, and are never
 * reused. The newest live key of a topic is its current key.
 *
 * Writers (cv_datakeys_lock_writer) hold a shared lock on
 * <log.dir>/datakeys.lock for as long as they run; an erasure takes it
 * exclusively, so a channel is never erased under a broker that still holds
 * its key in memory. Changes of the file take turns on a lock of the
 * directory. Neither name looks like a partition directory
 * (<topic>-<partition>), so no directory walker mistakes them for one.
 */
#ifndef CV_DATAKEYS_H
#define CV_DATAKEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keyring.h"

#define CV_DATAKEY_ID_MIN 0x80000000u
#define CV_DATAKEYS_FILE "datakeys"
#define CV_DATAKEYS_LOCK "datakeys.lock"

typedef struct cv_datakeys cv_datakeys;

/* Opens the store of log directory `log_dir` (a missing directory or file
 * is an empty store), unwrapping its keys with `master` (which must outlive
 * the store). A key whose master key is not in the ring stays unreadable
 * (cv_datakeys_get returns NULL for it). The caller owns *ret. */
int cv_datakeys_open(const char *log_dir, const cv_keyring *master, cv_datakeys **ret,
                     char *errbuf, size_t errlen);

/* The log directory the store belongs to. */
const char *cv_datakeys_dir(const cv_datakeys *dk);

/* The 32-byte key `id`, or NULL when the store has no live key of that id
 * (or its master key is missing). The pointer lives as long as the store. */
const unsigned char *cv_datakeys_get(cv_datakeys *dk, uint32_t id);

/* The live key `id` of `topic`, or NULL. */
const unsigned char *cv_datakeys_get_topic(cv_datakeys *dk, uint32_t id,
                                           const char *topic);

/* When key `id` was erased: its topic (a pointer that lives as long as the
 * store) and *ret_at_us the erasure time; NULL when it was not. */
const char *cv_datakeys_erased(cv_datakeys *dk, uint32_t id, int64_t *ret_at_us);

/* The current key of `topic`, created (and made durable: temp file, fsync,
 * rename, fsync of the directory) when it has none. Thread-safe. */
int cv_datakeys_current(cv_datakeys *dk, const char *topic, uint32_t *ret_id,
                        const unsigned char **ret_key, char *errbuf, size_t errlen);

/* Takes the writers' shared lock (held until cv_datakeys_free). */
int cv_datakeys_lock_writer(cv_datakeys *dk, char *errbuf, size_t errlen);

/* What erasing `topic` finds or did: the ids of its keys destroyed now
 * (live ones) and of those erased before. */
typedef struct cv_datakeys_erasure {
    uint32_t *ids; /* destroyed now (dry run: would be) */
    size_t n;
    size_t already; /* erased before */
} cv_datakeys_erasure;

/* Erases every live key of `topic`: takes the writers' lock exclusively
 * (-EBUSY with a message when a writer runs), replaces each "dek" line by an
 * "erased" line (who, reason, now) durably, and wipes the keys from memory.
 * With dry_run only fills *ret. Frees ret->ids with free(). */
int cv_datakeys_erase(cv_datakeys *dk, const char *topic, const char *user,
                      const char *reason, bool dry_run, cv_datakeys_erasure *ret,
                      char *errbuf, size_t errlen);

/* Sender erasure (`chatvault erase --sender`): the log keeps a sender's
 * records under the channel's key, so the store keeps a line
 *     sender <channel, or * for all> <sender id> <at, Unix us> <user> <reason>
 * and readers that rebuild or hand out messages (replay, export, restore,
 * drill, verify) pass such a sender's records over. Records one durably
 * (channel NULL: every channel); nothing when one covering it exists.
 * *ret_new: whether a line was added. */
int cv_datakeys_erase_sender(cv_datakeys *dk, const char *channel, const char *sender,
                             const char *user, const char *reason, bool dry_run,
                             bool *ret_new, char *errbuf, size_t errlen);

/* Whether `sender` was erased in `channel` (or in every channel). */
bool cv_datakeys_sender_erased(cv_datakeys *dk, const char *channel, const char *sender);

/* Whether the store records any erased sender (a reader's fast path). */
bool cv_datakeys_any_sender(cv_datakeys *dk);

/* Wipes the keys and frees the store, releasing its locks. Accepts NULL;
 * returns NULL. */
cv_datakeys *cv_datakeys_free(cv_datakeys *dk);

#endif
