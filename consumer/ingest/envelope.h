/*
 * envelope — decodes a chat topic record into a ChatMessage and validates it
 * against the contract in DESIGN.md: required fields, sizes, the channel
 * grammar, and that the message's channel is the channel of its topic (no
 * channel can write into another). A record that fails is rejected with a
 * reason (a short metric label) and a one-line error.
 */
#ifndef CV_ENVELOPE_H
#define CV_ENVELOPE_H

#include <stdbool.h>
#include <stddef.h>

#include "arena.h"
#include "chatvault.pb-c.h"

#define CV_MESSAGE_ID_MAX 128
#define CV_CHANNEL_MAX 200
#define CV_TOPIC_MAX 249

typedef enum cv_reject_reason {
    CV_REJECT_NONE = 0,
    CV_REJECT_DECODE,           /* not a ChatMessage */
    CV_REJECT_MISSING_FIELD,    /* message_id or channel empty */
    CV_REJECT_ID_TOO_LONG,      /* message_id over 128 bytes */
    CV_REJECT_BAD_CHANNEL,      /* channel outside [A-Za-z0-9._-]{1,200} */
    CV_REJECT_CHANNEL_MISMATCH, /* channel differs from the topic's */
    CV_REJECT_BODY_TOO_LARGE,   /* body over limits.max_body_bytes */
    CV_REJECT_BAD_TEXT,         /* a string field is not valid UTF-8 */
    CV_REJECT_BAD_REPLY_TO,     /* reply_to is not a topic chatvault may ack to */
    CV_REJECT_BAD_TOPIC,        /* the topic does not name a valid channel */
    CV_REJECT__COUNT
} cv_reject_reason;

/* "decode", "missing_field", ... (stable: used as metric labels). */
const char *cv_reject_reason_name(cv_reject_reason r);

typedef struct cv_envelope_rules {
    const char *topic_prefix; /* "chat." */
    size_t max_body_bytes;
    const char *ack_topic; /* reply_to may not name these or a chat topic */
    const char *dlq_topic;
} cv_envelope_rules;

typedef struct cv_envelope {
    /* Decoded message, allocated from the arena given to decode; NULL when
     * the record did not decode. Valid until the arena is reset. */
    Chatvault__V1__ChatMessage *msg;
    cv_reject_reason reason; /* CV_REJECT_NONE when valid */
    bool id_unreadable;      /* msg->message_id is not the id that was
                                   sent (a NUL cut it short): name no id */
    char error[200];         /* one line, set when rejected */
} cv_envelope;

/* Decodes and validates `value` read from `topic`. Returns 0 when valid,
 * -CV_EREJECT when rejected (env->reason, env->error say why; env->msg is
 * set if the bytes decoded, so a message id may be read), -ENOMEM when the
 * arena is exhausted. */
int cv_envelope_decode(const cv_envelope_rules *rules, const char *topic,
                       const void *value, size_t len, cv_arena *arena, cv_envelope *env);

/* The channel part of a topic name, or NULL when the topic does not carry
 * the prefix. */
const char *cv_envelope_topic_channel(const cv_envelope_rules *rules, const char *topic);

/* The message id of a decoded record, valid or rejected, when it can be
 * named: present, not cut short by a NUL, 1..CV_MESSAGE_ID_MAX bytes of
 * UTF-8. NULL otherwise (the record did not decode, or its id cannot be
 * trusted to be the one that was sent). A REJECTED ack and a
 * chatvault.rejected row carry exactly this. */
const char *cv_envelope_message_id(const cv_envelope *env);

bool cv_channel_valid(const char *s, size_t len);
bool cv_topic_name_valid(const char *s);

#endif
