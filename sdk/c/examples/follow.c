/* Follow one topic with the C SDK: ./follow 127.0.0.1:7000 match/42 (the conformance suite
 * compiles this file, so it cannot rot). */
#include <stdio.h>
#include "yorker.h"

int main(int argc, char **argv) {
    YorkerClient *c = yorker_client_new(argc > 1 ? argv[1] : "127.0.0.1:7000", "");
    yorker_client_subscribe(c, argc > 2 ? argv[2] : "match/42");
    for (;;) {
        YorkerEvent e;
        if (yorker_client_poll(c, 1000, &e) != 1) continue;
        if (e.kind == YORKER_EVENT_KIND_UPDATE || e.kind == YORKER_EVENT_KIND_RESET)
            printf("%s seq %llu: %zu bytes\n", e.topic, (unsigned long long)e.seq, e.payload_len);
        if (e.kind == YORKER_EVENT_KIND_DISCONNECTED) {
            if (e.retry_in_ms < 0) break; /* refused (a bad token): give up */
            printf("disconnected, retrying in %lld ms\n", (long long)e.retry_in_ms);
        }
    }
    yorker_client_free(c);
    return 1;
}
