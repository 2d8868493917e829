/* Replays inputs through a fuzz target without a fuzzing engine, so that gcc builds and
 * `make check` run the committed corpus (fuzz/corpus/<target>/) as regression tests.
 *
 *     replay_<target> PATH...
 *
 * Each PATH is a file (run once) or a directory (every regular file in it, in name order; not
 * recursive). Each input is read into a heap block of exactly its size, as libFuzzer does, so
 * that an over-read is caught by ASan. A crash or abort() of the target ends the program; the
 * input being run is named on stderr first when IMP_REPLAY_VERBOSE is set, and by the signal
 * handler otherwise. Exit status: 0 when every input ran ("replay: N inputs OK"), 1 when a PATH
 * does not exist or cannot be read. An existing empty directory is fine (0 inputs).
 */
#define _POSIX_C_SOURCE 200809L

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* Optional in a target, as in libFuzzer. */
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

static const char *current; /* the input being run, for the crash message */

static void on_crash(int sig)
{
    static const char msg[] = "replay: crashed on input: ";
    if (current) {
        ssize_t r = write(2, msg, sizeof msg - 1);
        r = write(2, current, strlen(current));
        r = write(2, "\n", 1);
        (void)r;
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Run one file. 0 on success, -1 if it could not be read. */
static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t cap = 4096, len = 0;
    uint8_t *buf = malloc(cap);
    if (!buf) {
        fclose(f);
        fprintf(stderr, "replay: out of memory\n");
        return -1;
    }
    size_t n;
    while ((n = fread(buf + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap) {
            uint8_t *q = realloc(buf, cap *= 2);
            if (!q) {
                free(buf);
                fclose(f);
                fprintf(stderr, "replay: out of memory\n");
                return -1;
            }
            buf = q;
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        fprintf(stderr, "replay: %s: read error\n", path);
        return -1;
    }
    /* an exact-size copy: the byte after the input is outside the block */
    uint8_t *exact = malloc(len ? len : 1);
    if (!exact) {
        free(buf);
        fprintf(stderr, "replay: out of memory\n");
        return -1;
    }
    if (len)
        memcpy(exact, buf, len);
    free(buf);
    current = path;
    if (getenv("IMP_REPLAY_VERBOSE"))
        fprintf(stderr, "replay: %s (%zu bytes)\n", path, len);
    LLVMFuzzerTestOneInput(exact, len);
    current = NULL;
    free(exact);
    return 0;
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

/* Run every regular file of a directory in name order; the count, or -1. */
static long run_dir(const char *dir)
{
    struct dirent **list;
    int n = scandir(dir, &list, NULL, by_name);
    if (n < 0) {
        fprintf(stderr, "replay: %s: %s\n", dir, strerror(errno));
        return -1;
    }
    long count = 0;
    int failed = 0;
    for (int i = 0; i < n; i++) {
        size_t len = strlen(dir) + 1 + strlen(list[i]->d_name) + 1;
        char *path = malloc(len);
        if (!path) {
            failed = 1;
        } else {
            struct stat st;
            snprintf(path, len, "%s/%s", dir, list[i]->d_name);
            if (!failed && stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
                if (run_file(path) < 0)
                    failed = 1;
                else
                    count++;
            }
            free(path);
        }
        free(list[i]);
    }
    free(list);
    return failed ? -1 : count;
}

int main(int argc, char **argv)
{
    if (LLVMFuzzerInitialize)
        LLVMFuzzerInitialize(&argc, &argv);
    signal(SIGABRT, on_crash);
    signal(SIGSEGV, on_crash);
    signal(SIGBUS, on_crash);
    signal(SIGFPE, on_crash);
    signal(SIGILL, on_crash);
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
        return 1;
    }
    long total = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
            return 1;
        }
        long n = S_ISDIR(st.st_mode) ? run_dir(argv[i]) : run_file(argv[i]) == 0 ? 1 : -1;
        if (n < 0)
            return 1;
        total += n;
    }
    printf("replay: %ld inputs OK\n", total);
    return 0;
}
