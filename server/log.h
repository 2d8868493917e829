/* imd — logging to stderr: text or JSON lines, with levels.
 *
 * Text:  2026-11-25T10:00:00.123Z info login user=alice addr=127.0.0.1:5555
 * JSON:  {"ts":"2026-11-25T10:00:00.123Z","level":"info","event":"login","user":"alice",...}
 *
 * ims_log(level, event, fmt, ...) takes the event name and then key=value pairs as a printf
 * format of the form "key=%s key2=%d". The formatted pairs are split on spaces; a value may be
 * double-quoted to hold spaces (text="hello world", with \" and \\ inside the quotes). In JSON
 * each pair becomes a string member (keys and values escaped: quotes, backslashes, control
 * characters as \u00XX, invalid UTF-8 as \ufffd); a word that is not key=value continues the
 * previous value (so "reason=%s" with strerror()'s text still gives one member), or, before the
 * first pair, goes to a "msg" member. In text the pairs are written as formatted, with control
 * characters shown as \n, \r, \t or \xHH so that a value cannot forge a line.
 *
 * Thread-safe: each line is formatted into a local buffer and written with one write(2). A line
 * is at most 4096 bytes with its newline (atomic on pipes); longer ones are cut and marked
 * (text: " [truncated]", JSON: "truncated":true, still valid JSON). errno is preserved.
 */
#ifndef IMS_LOG_H
#define IMS_LOG_H

typedef enum ims_log_level {
    IMS_LOG_ERROR = 0,
    IMS_LOG_WARN,
    IMS_LOG_INFO,
    IMS_LOG_DEBUG
} ims_log_level;

/* level: "error", "warn", "info", "debug"; format: "text", "json". 0 or -1 if unknown. */
int ims_log_setup(const char *level, const char *format);
int ims_log_enabled(ims_log_level level);
/* Where lines go: default 2 (stderr). For tests and for a log file opened by main.c. */
void ims_log_set_fd(int fd);

#define IMS_LOG_LINE_MAX 4096
#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
void ims_log(ims_log_level level, const char *event, const char *kv_fmt, ...);

#endif
