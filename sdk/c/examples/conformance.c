/* The C SDK's conformance driver: the C API behind the line protocol of docs/CLIENTS.md
 * ("Conformance"). Commands on stdin, events on stdout, one per line. Also the C example the
 * tests compile and run: build with
 *   cc -o conformance sdk/c/examples/conformance.c -Isdk/c/include \
 *      target/debug/libyorker_c.a -lpthread -ldl -lm
 */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "yorker.h"

/* stdin is read with read(2) into our own buffer: stdio's buffering would hide a second
 * command from poll(2). Returns 1 with a line in `line`, 0 without one, -1 at end of input. */
static char inbuf[8192];
static size_t inlen = 0;
static int next_line(char *line, size_t cap) {
    for (;;) {
        char *nl = memchr(inbuf, '\n', inlen);
        if (nl) {
            size_t n = (size_t)(nl - inbuf);
            if (n >= cap) n = cap - 1;
            memcpy(line, inbuf, n);
            line[n] = 0;
            size_t used = (size_t)(nl - inbuf) + 1;
            memmove(inbuf, inbuf + used, inlen - used);
            inlen -= used;
            return 1;
        }
        struct pollfd p = {.fd = 0, .events = POLLIN};
        if (poll(&p, 1, 0) <= 0) return 0;
        ssize_t r = read(0, inbuf + inlen, sizeof inbuf - inlen);
        if (r <= 0) return -1;
        inlen += (size_t)r;
    }
}

static void hex(const uint8_t *p, size_t n) {
    if (n == 0) { fputs("-", stdout); return; }
    for (size_t i = 0; i < n; i++) printf("%02x", p[i]);
}

static const char *reason(YorkerReason r) {
    switch (r) {
    case YORKER_REASON_CONNECTION_LOST: return "connection_lost";
    case YORKER_REASON_GO_AWAY: return "goaway";
    case YORKER_REASON_ERROR: return "error";
    case YORKER_REASON_SERVER_SILENT: return "server_silent";
    case YORKER_REASON_HANDSHAKE_TIMEOUT: return "handshake_timeout";
    case YORKER_REASON_PROTOCOL: return "protocol";
    case YORKER_REASON_REQUESTED: return "requested";
    case YORKER_REASON_CLOSED: return "closed";
    default: return "other";
    }
}

static void print_event(const YorkerEvent *e) {
    switch (e->kind) {
    case YORKER_EVENT_KIND_CONNECTED:
        printf("connected %llu %llu\n", (unsigned long long)e->session_id, (unsigned long long)e->epoch);
        break;
    case YORKER_EVENT_KIND_SUBSCRIBED:
        printf("subscribed %s %d\n", e->topic, e->result);
        break;
    case YORKER_EVENT_KIND_UPDATE:
        printf("update %s %llu %d ", e->topic, (unsigned long long)e->seq, e->snapshot);
        hex(e->payload, e->payload_len);
        printf("\n");
        break;
    case YORKER_EVENT_KIND_RESET:
        printf("reset %s %llu ", e->topic, (unsigned long long)e->seq);
        hex(e->payload, e->payload_len);
        printf("\n");
        break;
    case YORKER_EVENT_KIND_DISCONNECTED:
        printf("disconnected %s", reason(e->reason));
        if (e->reason == YORKER_REASON_GO_AWAY) printf(" %u %u", e->code, e->after_ms);
        if (e->reason == YORKER_REASON_ERROR) printf(" %u", e->code);
        if (e->retry_in_ms < 0) printf(" retry none\n");
        else printf(" retry %lld\n", (long long)e->retry_in_ms);
        break;
    default:
        break;
    }
    fflush(stdout);
}

int main(void) {
    YorkerClient *c = NULL;
    char line[4096];
    for (;;) {
        int got = next_line(line, sizeof line);
        if (got < 0) break;
        if (got > 0) {
            char a[1024], b[1024];
            int n;
            if (sscanf(line, "connect %1023s %1023s", a, b) == 2) {
                if (c) yorker_client_free(c);
                c = yorker_client_new(a, strcmp(b, "-") == 0 ? "" : b);
                if (!c) { printf("error bad arguments\n"); fflush(stdout); }
            } else if (sscanf(line, "subscribe %1023s", a) == 1) {
                if (yorker_client_subscribe(c, a) != 0) { printf("error subscribe\n"); fflush(stdout); }
            } else if (strcmp(line, "reconnect") == 0) {
                yorker_client_reconnect_now(c);
            } else if (strcmp(line, "close") == 0) {
                YorkerEvent e;
                yorker_client_close(c);
                while (c && yorker_client_poll(c, 0, &e) == 1) print_event(&e);
                yorker_client_free(c);
                c = NULL;
                printf("closed\n");
                fflush(stdout);
            } else if (sscanf(line, "swarm %d %1023s", &n, a) == 2) {
                YorkerClient **cs = calloc((size_t)n, sizeof *cs);
                printf("delays");
                for (int i = 0; i < n; i++) {
                    YorkerEvent e;
                    cs[i] = yorker_client_new(a, "");
                    for (;;) {
                        if (yorker_client_poll(cs[i], 50, &e) == 1 && e.kind == YORKER_EVENT_KIND_DISCONNECTED) {
                            printf(" %lld", (long long)e.retry_in_ms);
                            break;
                        }
                    }
                }
                printf("\n");
                fflush(stdout);
                for (int i = 0; i < n; i++) yorker_client_free(cs[i]);
                free(cs);
            } else if (strcmp(line, "exit") == 0) {
                break;
            } else {
                printf("unknown %s\n", line);
                fflush(stdout);
            }
        }
        if (c) {
            YorkerEvent e;
            if (yorker_client_poll(c, 5, &e) == 1) print_event(&e);
        } else {
            struct pollfd q = {.fd = 0, .events = POLLIN};
            poll(&q, 1, 5);
        }
    }
    yorker_client_free(c);
    return 0;
}
