/*
 * metrics_http: serves GET /metrics in the Prometheus text format on a
 * loopback address, with libmicrohttpd driven from the libuv loop.
 *
 * libmicrohttpd runs without threads of its own (MHD_USE_EPOLL, external
 * polling): its epoll descriptor is watched with a uv_poll_t and its
 * timeouts with a uv_timer_t, so metrics_render() and the collector run on
 * the loop thread like everything else and need no locks.
 *
 * Only loopback addresses are accepted (127.0.0.0/8, ::1, "localhost"):
 * the endpoint has no authentication, so it must not be reachable from
 * elsewhere. GET or HEAD /metrics answers 200; other paths 404; other
 * methods 405. Connections are limited in number and time.
 *
 * Ownership: the server keeps `collect`/`arg` until metrics_http_stop()'s
 * callback has run; the caller keeps them alive that long.
 */
#ifndef SMTPSYNC_METRICS_HTTP_H
#define SMTPSYNC_METRICS_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "metrics.h"

struct metrics_http;

/* Listens on HOST:PORT as the config file parsed them ([node]
 * metrics_listen: "127.0.0.1", "::1" without brackets, "localhost"; port 0
 * picks one). Returns 0, or an error code with `why` saying what went wrong
 * (not loopback, address in use, ...). */
int metrics_http_start(uv_loop_t *loop, const char *host, uint16_t port, metrics_collect_cb collect,
                       void *arg, struct metrics_http **out, char *why, size_t whylen);
/* The port listened on (useful after port 0). */
int metrics_http_port(const struct metrics_http *h);
/* Closes the listener and every connection; `done` runs once the handles
 * are closed and `h` is freed. */
void metrics_http_stop(struct metrics_http *h, void (*done)(void *arg), void *arg);

#endif
