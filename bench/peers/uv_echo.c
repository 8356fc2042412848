/* libuv echo, one loop. Reads land in one shared buffer and are written back
 * with uv_try_write; only what it cannot send at once is copied and queued with
 * uv_write (libuv keeps queued writes in order and finishes short writes). End
 * of stream shuts the write side down once the queue has drained, then closes.
 * A connection whose queue grows past WRITE_HIGH stops reading until it drains. */
#include "peer_common.h"

#include <uv.h>

#define BUF_SIZE (64 * 1024)
#define WRITE_HIGH (1024 * 1024)

struct write_req {
    uv_write_t req;
    char data[];
};

static char shared_buf[BUF_SIZE];
static uv_tcp_t server;

static void on_close(uv_handle_t *h)
{
    free(h);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    (void)suggested;
    *buf = uv_buf_init(shared_buf, sizeof shared_buf);
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

static void shutdown_cb(uv_shutdown_t *req, int status)
{
    (void)status;
    if (!uv_is_closing((uv_handle_t *)req->handle))
        uv_close((uv_handle_t *)req->handle, on_close);
    free(req);
}

static void write_cb(uv_write_t *req, int status)
{
    uv_stream_t *s = req->handle;
    free(req);
    if (status < 0) {
        if (!uv_is_closing((uv_handle_t *)s))
            uv_close((uv_handle_t *)s, on_close);
        return;
    }
    if (s->data && s->write_queue_size == 0 && !uv_is_closing((uv_handle_t *)s)) {
        s->data = NULL; /* was throttled: read again */
        uv_read_start(s, alloc_cb, read_cb);
    }
}

static void queue_write(uv_stream_t *s, const char *p, size_t len)
{
    struct write_req *w = malloc(sizeof *w + len);
    if (!w) {
        uv_close((uv_handle_t *)s, on_close);
        return;
    }
    memcpy(w->data, p, len);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
    if (uv_write(&w->req, s, &b, 1, write_cb) < 0) {
        free(w);
        uv_close((uv_handle_t *)s, on_close);
        return;
    }
    if (s->write_queue_size > WRITE_HIGH) {
        s->data = s; /* throttled */
        uv_read_stop(s);
    }
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    if (n == 0)
        return;
    if (n == UV_EOF) { /* half-close: send what is still owed, then close */
        uv_shutdown_t *req = malloc(sizeof *req);
        if (!req || uv_shutdown(req, s, shutdown_cb) < 0) {
            free(req);
            uv_close((uv_handle_t *)s, on_close);
        }
        return;
    }
    if (n < 0) {
        uv_close((uv_handle_t *)s, on_close);
        return;
    }
    uv_buf_t b = uv_buf_init(buf->base, (unsigned)n);
    int w = uv_try_write(s, &b, 1);
    if (w == UV_EAGAIN)
        w = 0;
    if (w < 0) {
        uv_close((uv_handle_t *)s, on_close);
        return;
    }
    if (w < n)
        queue_write(s, buf->base + w, (size_t)(n - w));
}

static void on_connection(uv_stream_t *srv, int status)
{
    if (status < 0)
        return;
    uv_tcp_t *c = malloc(sizeof *c);
    if (!c)
        return;
    uv_tcp_init(srv->loop, c);
    c->data = NULL;
    if (uv_accept(srv, (uv_stream_t *)c) < 0) {
        uv_close((uv_handle_t *)c, on_close);
        return;
    }
    uv_tcp_nodelay(c, 1);
    uv_read_start((uv_stream_t *)c, alloc_cb, read_cb);
}

int main(int argc, char **argv)
{
    int lfd = peer_listen(peer_parse_port(argc, argv), 1);
    uv_loop_t *loop = uv_default_loop();
    uv_tcp_init(loop, &server);
    if (uv_tcp_open(&server, lfd) < 0 ||
        uv_listen((uv_stream_t *)&server, PEER_BACKLOG, on_connection) < 0) {
        fprintf(stderr, "uv_listen failed\n");
        return 1;
    }
    return uv_run(loop, UV_RUN_DEFAULT);
}
