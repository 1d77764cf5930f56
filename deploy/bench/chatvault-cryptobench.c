/*
 * chatvault-cryptobench — what libsodium's primitives cost per call at the
 * sizes the encrypted log uses, with nothing else running in the process:
 * ChaCha20 (IETF) alone, ChaCha20-Poly1305 (IETF) as the log seals a record
 * (detached tag, 96 bytes of additional data) and BLAKE2b-256 as the chain
 * hash, for each length from 256 to 640 bytes in steps of 32 (the log's
 * records of the bench are ~365-byte plaintexts in ~445-byte frames).
 *
 *   chatvault-cryptobench [CALLS]      (default 1000000 calls per figure)
 *
 * Prints one line per length, microseconds per call of each.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <sodium.h>

#define MIN_BYTES 256
#define MAX_BYTES 640

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    char *end = NULL;
    long calls = argc > 1 ? strtol(argv[1], &end, 10) : 1000000;
    if (argc > 2 || (end && *end) || calls < 1) {
        fprintf(stderr, "usage: chatvault-cryptobench [CALLS]\n");
        return 2;
    }
    if (sodium_init() < 0) {
        fprintf(stderr, "chatvault-cryptobench: libsodium failed to initialise\n");
        return 1;
    }
    unsigned char key[crypto_aead_chacha20poly1305_ietf_KEYBYTES];
    unsigned char nonce[crypto_aead_chacha20poly1305_ietf_NPUBBYTES] = {0};
    unsigned char ad[96], tag[crypto_aead_chacha20poly1305_ietf_ABYTES], hash[32];
    unsigned char *buf = malloc(MAX_BYTES);
    if (!buf) {
        fprintf(stderr, "chatvault-cryptobench: out of memory\n");
        return 1;
    }
    randombytes_buf(key, sizeof(key));
    randombytes_buf(ad, sizeof(ad));
    randombytes_buf(buf, MAX_BYTES);
    printf("libsodium %s, %ld calls per figure, microseconds per call\n",
           sodium_version_string(), calls);
    printf("%8s %10s %18s %12s\n", "bytes", "ChaCha20", "ChaCha20-Poly1305",
           "BLAKE2b-256");
    for (long n = MIN_BYTES; n <= MAX_BYTES; n += 32) {
        double t0 = now();
        for (long i = 0; i < calls; i++) {
            nonce[4] = (unsigned char)i;
            crypto_stream_chacha20_ietf_xor_ic(buf, buf, (unsigned long long)n, nonce, 1,
                                               key);
        }
        double t1 = now();
        for (long i = 0; i < calls; i++) {
            nonce[4] = (unsigned char)i;
            crypto_aead_chacha20poly1305_ietf_encrypt_detached(
                buf, tag, NULL, buf, (unsigned long long)n, ad, sizeof(ad), NULL, nonce,
                key);
        }
        double t2 = now();
        for (long i = 0; i < calls; i++) {
            crypto_generichash(hash, sizeof(hash), buf, (size_t)n, NULL, 0);
            buf[0] ^= hash[0]; /* each hash depends on the one before */
        }
        double t3 = now();
        printf("%8ld %10.3f %18.3f %12.3f\n", n, (t1 - t0) * 1e6 / (double)calls,
               (t2 - t1) * 1e6 / (double)calls, (t3 - t2) * 1e6 / (double)calls);
    }
    free(buf);
    return 0;
}
