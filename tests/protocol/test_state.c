/* Tests for protocol/state.c: every cell of the four state tables of SPEC.md section 7, for both
 * roles, checked against the real connection API (imp_conn_*).
 *
 * The tables are not copied here: they are parsed from SPEC.md (IMP_SRCDIR "/protocol/SPEC.md")
 * together with what is needed to read them — the frame types of section 5 (name, number), the
 * error codes of section 6 (name, number), and the groups APP_C and APP_S defined in section 7.
 * Each cell is then checked on a fresh connection driven to the row's state with valid frames:
 *   receive tables: a valid frame of the column's type is fed, and imp_conn_next_event's result
 *                   (1 with the frame, 0 for `ignore`, or the table's error), the state after it
 *                   and the frames queued in the output (decoded) are compared with the cell;
 *   send tables:    imp_conn_send is called, and its result, the state after it and the output
 *                   (exactly the frame, or nothing on refusal) are compared with the cell.
 * IMP-SESS-001, IMP-SESS-002, IMP-SESS-003, IMP-SESS-004, IMP-SESS-005, IMP-SESS-007,
 * IMP-SESS-008, IMP-MSG-001, IMP-MSG-002, IMP-MSG-005, IMP-ERR-002, IMP-SEC-001.
 *
 * The server's tables are checked twice, on connections with deferred LOGOUT off (the default)
 * and on (imp_conn_set_defer_logout, IMP-SESS-008): a cell "…, X if deferred" gives X with the
 * option on (and no automatic answer), every other cell must mean the same in both modes. The
 * row LOGOUT_RCVD is reachable with the option on only.
 *
 * A cell that does not match is reported with its table, state and type (all mismatches of a
 * table are printed before the test fails).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imp/imp.h"

#ifndef IMP_SRCDIR
#define IMP_SRCDIR "."
#endif

#if defined(__GNUC__)
#define PRINTF_LIKE(f, a) __attribute__((format(printf, f, a)))
#else
#define PRINTF_LIKE(f, a)
#endif

#define ARROW "\xe2\x86\x92" /* U+2192, as written in SPEC.md: "fatal→CLOSING" */

/* ---- what is read from SPEC.md ---------------------------------------------------------- */

#define MAX_ERRS 96
#define MAX_ROWS 8
#define NAME_LEN 40
#define CELL_LEN 160

typedef struct spec_type {
    char name[NAME_LEN];
    uint8_t code;
    unsigned dir; /* IMP_DIR_* */
} spec_type;

typedef struct spec_err {
    char name[NAME_LEN];
    int code; /* wire code, positive */
} spec_err;

enum act_kind { A_NONE = 0, A_IGNORE, A_SAME, A_STATE, A_ERROR };

typedef struct action {
    enum act_kind kind;
    imp_state st; /* A_STATE */
    int err;      /* A_ERROR: negative IMP_ERR_* */
} action;

/* One cell, interpreted per the notation paragraph of section 7. */
typedef struct cell {
    char text[CELL_LEN];
    action normal;    /* the cell, or for ERROR "as the rest of the cell says" */
    int has_fatal;    /* "fatal→X, rest" (ERROR columns only) */
    action fatal;     /* X */
    int has_cond;     /* "A if LOGOUT's id, else B": normal = A, cond_else = B */
    action cond_else; /* B */
    int has_deferred; /* "…, X if deferred": deferred = X (server receive, IMP-SESS-008) */
    action deferred;
    uint8_t auto_type; /* "(auto X)": the library queues X by itself */
    int alt_err;       /* "(...; VERSION→fatal)": the condition that makes the frame fatal */
    int set;           /* filled from exactly one column */
} cell;

typedef struct table {
    char heading[96];
    imp_role role;
    int is_send;
    int nrows;
    char row_name[MAX_ROWS][NAME_LEN];
    imp_state row_state[MAX_ROWS];
    cell cells[MAX_ROWS][IMP_TYPE_COUNT]; /* by index into g.types */
} table;

static struct {
    int loaded;
    char why[512];
    spec_type types[IMP_TYPE_COUNT];
    int ntypes;
    spec_err errs[MAX_ERRS];
    int nerrs;
    uint32_t app_c, app_s; /* masks over type indices */
    int have_app_c, have_app_s;
    table tables[4]; /* 7.1, 7.2, 7.3, 7.4 */
    int ntables;
    unsigned long cells_checked;
    unsigned long checks; /* sub-cases run (variants of cells) */
} g;

/* The states of conn.h by name (independent of imp_state_name, which is checked against it). */
static const struct {
    const char *name;
    imp_state st;
} k_states[] = {
    {"AWAIT_HELLO", IMP_S_AWAIT_HELLO},
    {"AWAIT_AUTH", IMP_S_AWAIT_AUTH},
    {"AUTHENTICATING", IMP_S_AUTHENTICATING},
    {"HELLO_SENT", IMP_S_HELLO_SENT},
    {"CONNECTED", IMP_S_CONNECTED},
    {"AUTH_SENT", IMP_S_AUTH_SENT},
    {"READY", IMP_S_READY},
    {"LOGOUT_SENT", IMP_S_LOGOUT_SENT},
    {"CLOSING", IMP_S_CLOSING},
    {"LOGOUT_RCVD", IMP_S_LOGOUT_RCVD},
};
#define NSTATES (sizeof k_states / sizeof k_states[0])

static const char *state_str(imp_state st)
{
    for (size_t i = 0; i < NSTATES; i++)
        if (k_states[i].st == st)
            return k_states[i].name;
    return "?";
}

static int state_lookup(const char *name, imp_state *st)
{
    for (size_t i = 0; i < NSTATES; i++)
        if (strcmp(k_states[i].name, name) == 0) {
            *st = k_states[i].st;
            return 1;
        }
    return 0;
}

/* Copy a string, truncated to cap - 1 bytes. */
static void scopy(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (len + 1 >= cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t n = fread(buf + len, 1, cap - len - 1, f);
        if (n == 0)
            break;
        len += n;
    }
    fclose(f);
    if (buf)
        buf[len] = '\0';
    return buf;
}

static void trim(char *s)
{
    size_t n = strlen(s), i = 0;
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
        s[--n] = '\0';
    while (s[i] == ' ' || s[i] == '\t')
        i++;
    if (i)
        memmove(s, s + i, n - i + 1);
}

/* Split a markdown table row "| a | b |" into trimmed cells. Returns the count, -1 if too many. */
static int split_row(const char *line, char cells[][CELL_LEN], int max)
{
    const char *p = line;
    int n = 0;
    if (*p != '|')
        return -1;
    p++;
    for (;;) {
        const char *e = strchr(p, '|');
        if (!e)
            break;
        if (n == max || (size_t)(e - p) >= CELL_LEN)
            return -1;
        memcpy(cells[n], p, (size_t)(e - p));
        cells[n][e - p] = '\0';
        trim(cells[n]);
        n++;
        p = e + 1;
    }
    return n;
}

/* The line that starts at *pos; advances *pos past it. Copies at most cap-1 bytes. */
static int next_line(const char *text, size_t *pos, char *out, size_t cap)
{
    if (text[*pos] == '\0')
        return 0;
    const char *s = text + *pos, *e = strchr(s, '\n');
    size_t len = e ? (size_t)(e - s) : strlen(s);
    size_t c = len < cap - 1 ? len : cap - 1;
    memcpy(out, s, c);
    out[c] = '\0';
    *pos += len + (e ? 1 : 0);
    return 1;
}

static int type_index(const char *name)
{
    for (int i = 0; i < g.ntypes; i++)
        if (strcmp(g.types[i].name, name) == 0)
            return i;
    return -1;
}

static int type_index_of_code(uint8_t code)
{
    for (int i = 0; i < g.ntypes; i++)
        if (g.types[i].code == code)
            return i;
    return -1;
}

static int err_lookup(const char *name)
{
    for (int i = 0; i < g.nerrs; i++)
        if (strcmp(g.errs[i].name, name) == 0)
            return -g.errs[i].code;
    return 0;
}

static const char *err_str(int err)
{
    int code = err < 0 ? -err : err;
    for (int i = 0; i < g.nerrs; i++)
        if (g.errs[i].code == code)
            return g.errs[i].name;
    return "?";
}

static const char *type_str(uint8_t code)
{
    int i = type_index_of_code(code);
    return i >= 0 ? g.types[i].name : "?";
}

#define LINE_MAX_LEN 1024

/* Section 5: "| 0x01 | HELLO | C→S | fields |". */
static int parse_types(const char *text)
{
    size_t pos = 0;
    char line[LINE_MAX_LEN], cells[8][CELL_LEN];
    int in = 0;
    while (next_line(text, &pos, line, sizeof line)) {
        int n = line[0] == '|' ? split_row(line, cells, 8) : -1;
        if (!in) {
            if (n == 4 && strcmp(cells[0], "type") == 0 && strcmp(cells[1], "name") == 0 &&
                strcmp(cells[2], "dir") == 0)
                in = 1;
            continue;
        }
        if (n < 0)
            break;
        if (strncmp(cells[0], "---", 3) == 0)
            continue;
        if (n != 4 || strncmp(cells[0], "0x", 2) != 0 || g.ntypes == IMP_TYPE_COUNT) {
            snprintf(g.why, sizeof g.why, "section 5 table: bad row '%.300s'", line);
            return -1;
        }
        spec_type *t = &g.types[g.ntypes++];
        unsigned long code = strtoul(cells[0] + 2, NULL, 16);
        scopy(t->name, sizeof t->name, cells[1]);
        t->code = (uint8_t)code;
        if (strcmp(cells[2], "C" ARROW "S") == 0)
            t->dir = IMP_DIR_C2S;
        else if (strcmp(cells[2], "S" ARROW "C") == 0)
            t->dir = IMP_DIR_S2C;
        else if (strcmp(cells[2], "both") == 0)
            t->dir = IMP_DIR_BOTH;
        else {
            snprintf(g.why, sizeof g.why, "section 5 table: bad direction '%s'", cells[2]);
            return -1;
        }
    }
    if (g.ntypes != IMP_TYPE_COUNT) {
        snprintf(g.why, sizeof g.why, "section 5 table: %d types, want %d", g.ntypes,
                 IMP_TYPE_COUNT);
        return -1;
    }
    return 0;
}

/* Section 6: "| 706 | STATE | meaning |" (class rows like "| **2xx** | ..." skipped). */
static int parse_errors(const char *text)
{
    size_t pos = 0;
    char line[LINE_MAX_LEN], cells[8][CELL_LEN];
    int in = 0;
    while (next_line(text, &pos, line, sizeof line)) {
        int n = line[0] == '|' ? split_row(line, cells, 8) : -1;
        if (!in) {
            if (n == 3 && strcmp(cells[0], "code") == 0 && strcmp(cells[1], "name") == 0)
                in = 1;
            continue;
        }
        if (n < 0)
            break;
        if (n != 3 || cells[0][0] < '0' || cells[0][0] > '9')
            continue;
        if (g.nerrs == MAX_ERRS) {
            snprintf(g.why, sizeof g.why, "section 6 table: too many codes");
            return -1;
        }
        spec_err *e = &g.errs[g.nerrs++];
        e->code = atoi(cells[0]);
        scopy(e->name, sizeof e->name, cells[1]);
    }
    if (g.nerrs < 40) {
        snprintf(g.why, sizeof g.why, "section 6 table: only %d codes", g.nerrs);
        return -1;
    }
    return 0;
}

/* Section 7: "- `APP_C` = SEND, DELIVERED, ...,\n  STATS, MONITOR (client requests ...);" */
static int parse_group(const char *text, const char *group, uint32_t *mask)
{
    char key[64], buf[1024];
    snprintf(key, sizeof key, "`%s` =", group);
    const char *p = strstr(text, key);
    if (!p) {
        snprintf(g.why, sizeof g.why, "section 7: no definition of %s", group);
        return -1;
    }
    p += strlen(key);
    size_t n = strcspn(p, "(;");
    if (n >= sizeof buf) {
        snprintf(g.why, sizeof g.why, "section 7: definition of %s too long", group);
        return -1;
    }
    memcpy(buf, p, n);
    buf[n] = '\0';
    *mask = 0;
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        char name[NAME_LEN];
        scopy(name, sizeof name, tok);
        for (char *q = name; *q; q++)
            if (*q == '\n')
                *q = ' ';
        trim(name);
        int i = type_index(name);
        if (i < 0 || (*mask >> i) & 1u) {
            snprintf(g.why, sizeof g.why, "group %s: unknown or repeated type '%s'", group, name);
            return -1;
        }
        *mask |= 1u << i;
    }
    return 0;
}

/* A column header item: a type, a group, or "GROUP except TYPE". */
static int expand_item(const char *item, uint32_t *mask)
{
    char buf[CELL_LEN];
    scopy(buf, sizeof buf, item);
    trim(buf);
    uint32_t except = 0;
    char *ex = strstr(buf, " except ");
    if (ex) {
        char *other = ex + strlen(" except ");
        *ex = '\0';
        trim(other);
        int i = type_index(other);
        if (i < 0)
            return -1;
        except = 1u << i;
    }
    if (strcmp(buf, "APP_C") == 0)
        *mask = g.app_c;
    else if (strcmp(buf, "APP_S") == 0)
        *mask = g.app_s;
    else {
        int i = type_index(buf);
        if (i < 0)
            return -1;
        *mask = 1u << i;
    }
    if (except && !(*mask & except))
        return -1;
    *mask &= ~except;
    return 0;
}

static int parse_action(const table *t, const char *s0, action *a)
{
    char s[CELL_LEN];
    scopy(s, sizeof s, s0);
    trim(s);
    memset(a, 0, sizeof *a);
    if (strcmp(s, "ignore") == 0) {
        a->kind = A_IGNORE;
        return 0;
    }
    if (strcmp(s, "=") == 0) {
        a->kind = A_SAME;
        return 0;
    }
    for (int r = 0; r < t->nrows; r++)
        if (strcmp(t->row_name[r], s) == 0) {
            a->kind = A_STATE;
            a->st = t->row_state[r];
            return 0;
        }
    int e = err_lookup(s);
    if (e) {
        a->kind = A_ERROR;
        a->err = e;
        return 0;
    }
    return -1;
}

static int parse_cell(const table *t, const char *text, uint8_t type, cell *c)
{
    char main_part[CELL_LEN], ann[CELL_LEN] = "";
    memset(c, 0, sizeof *c);
    scopy(c->text, sizeof c->text, text);
    scopy(main_part, sizeof main_part, text);
    /* "REST, X if deferred": X with deferred LOGOUT, REST otherwise (read below) */
    {
        const char *suffix = " if deferred";
        size_t n = strlen(main_part), sl = strlen(suffix);
        if (n > sl && strcmp(main_part + n - sl, suffix) == 0) {
            main_part[n - sl] = '\0';
            char *comma = strrchr(main_part, ',');
            if (!comma || t->is_send || t->role != IMP_ROLE_SERVER)
                return -1;
            *comma = '\0';
            c->has_deferred = 1;
            if (parse_action(t, comma + 1, &c->deferred))
                return -1;
        }
    }
    char *open = strchr(main_part, '(');
    if (open) {
        char *close = strchr(open, ')');
        if (!close)
            return -1;
        *close = '\0';
        scopy(ann, sizeof ann, open + 1);
        *open = '\0';
    }
    trim(main_part);
    /* annotations: "auto X" and "NAME→fatal", separated by ';' */
    for (char *tok = strtok(ann, ";"); tok; tok = strtok(NULL, ";")) {
        char item[CELL_LEN];
        scopy(item, sizeof item, tok);
        trim(item);
        size_t n = strlen(item), al = strlen(ARROW "fatal");
        if (strncmp(item, "auto ", 5) == 0) {
            char name[NAME_LEN];
            scopy(name, sizeof name, item + 5);
            trim(name);
            int i = type_index(name);
            if (i < 0)
                return -1;
            c->auto_type = g.types[i].code;
        } else if (n > al && strcmp(item + n - al, ARROW "fatal") == 0) {
            item[n - al] = '\0';
            trim(item);
            c->alt_err = err_lookup(item);
            if (!c->alt_err)
                return -1;
        } else {
            return -1;
        }
    }
    const char *fatal = "fatal" ARROW;
    const char *cond = " if LOGOUT's id, else ";
    char *sep;
    if (strncmp(main_part, fatal, strlen(fatal)) == 0) {
        char *rest = main_part + strlen(fatal);
        char *comma = strchr(rest, ',');
        if (!comma || type != IMP_ERROR)
            return -1;
        *comma = '\0';
        c->has_fatal = 1;
        if (parse_action(t, rest, &c->fatal) || parse_action(t, comma + 1, &c->normal))
            return -1;
    } else if ((sep = strstr(main_part, cond)) != NULL) {
        *sep = '\0';
        c->has_cond = 1;
        if (parse_action(t, main_part, &c->normal) ||
            parse_action(t, sep + strlen(cond), &c->cond_else))
            return -1;
    } else if (parse_action(t, main_part, &c->normal)) {
        return -1;
    }
    /* the notation's constraints: ignore only in receive tables, NOT_ALLOWED/CLOSED only in
     * send tables, only local refusals in send tables */
    action acts[4] = {c->normal, c->fatal, c->cond_else, c->deferred};
    for (int i = 0; i < 4; i++) {
        if (acts[i].kind == A_IGNORE && t->is_send)
            return -1;
        if (acts[i].kind == A_ERROR && t->is_send && acts[i].err != IMP_ERR_NOT_ALLOWED &&
            acts[i].err != IMP_ERR_CLOSED)
            return -1;
        if (acts[i].kind == A_ERROR && !t->is_send &&
            (acts[i].err == IMP_ERR_NOT_ALLOWED || acts[i].err == IMP_ERR_CLOSED))
            return -1;
    }
    if ((c->auto_type || c->alt_err) && t->is_send)
        return -1;
    return 0;
}

static int parse_table(const char *text, size_t pos, table *t)
{
    char line[LINE_MAX_LEN], hdr[16][CELL_LEN], row[16][CELL_LEN];
    uint32_t colmask[16];
    int ncols = -1;
    /* the header: the first table line after the heading */
    while (next_line(text, &pos, line, sizeof line)) {
        if (strncmp(line, "###", 3) == 0)
            break;
        if (line[0] != '|')
            continue;
        ncols = split_row(line, hdr, 16);
        break;
    }
    if (ncols < 2 || strcmp(hdr[0], "state") != 0) {
        snprintf(g.why, sizeof g.why, "%s: no table header", t->heading);
        return -1;
    }
    uint32_t all = 0;
    for (int c = 1; c < ncols; c++) {
        char items[CELL_LEN];
        colmask[c] = 0;
        scopy(items, sizeof items, hdr[c]);
        char *save = items;
        for (;;) {
            char *comma = strchr(save, ',');
            if (comma)
                *comma = '\0';
            uint32_t m;
            if (expand_item(save, &m)) {
                snprintf(g.why, sizeof g.why, "%s: bad column item '%s'", t->heading, save);
                return -1;
            }
            if (colmask[c] & m || all & m) {
                snprintf(g.why, sizeof g.why, "%s: a type appears twice (column '%s')", t->heading,
                         hdr[c]);
                return -1;
            }
            colmask[c] |= m;
            all |= m;
            if (!comma)
                break;
            save = comma + 1;
        }
    }
    if (all != (uint32_t)((1ull << IMP_TYPE_COUNT) - 1)) {
        snprintf(g.why, sizeof g.why, "%s: the columns cover mask %#lx, not all %d types",
                 t->heading, (unsigned long)all, IMP_TYPE_COUNT);
        return -1;
    }
    while (next_line(text, &pos, line, sizeof line)) {
        if (line[0] != '|')
            break;
        int n = split_row(line, row, 16);
        if (n > 0 && strncmp(row[0], "---", 3) == 0)
            continue;
        if (n != ncols || t->nrows == MAX_ROWS) {
            snprintf(g.why, sizeof g.why, "%.80s: bad row '%.300s'", t->heading, line);
            return -1;
        }
        int r = t->nrows++;
        scopy(t->row_name[r], sizeof t->row_name[r], row[0]);
        if (!state_lookup(row[0], &t->row_state[r])) {
            snprintf(g.why, sizeof g.why, "%s: unknown state '%s'", t->heading, row[0]);
            return -1;
        }
    }
    return ncols; /* cells are read by fill_cells, once all row names (next states) are known */
}

static int fill_cells(const char *text, size_t table_pos, table *t)
{
    char line[LINE_MAX_LEN], hdr[16][CELL_LEN], row[16][CELL_LEN];
    size_t pos = table_pos;
    int ncols = -1, r = 0;
    while (next_line(text, &pos, line, sizeof line))
        if (line[0] == '|') {
            ncols = split_row(line, hdr, 16);
            break;
        }
    while (next_line(text, &pos, line, sizeof line)) {
        if (line[0] != '|')
            break;
        int n = split_row(line, row, 16);
        if (n > 0 && strncmp(row[0], "---", 3) == 0)
            continue;
        for (int c = 1; c < n && c < ncols; c++) {
            uint32_t m = 0;
            char items[CELL_LEN];
            scopy(items, sizeof items, hdr[c]);
            for (char *save = items;;) {
                char *comma = strchr(save, ',');
                uint32_t one = 0;
                if (comma)
                    *comma = '\0';
                if (expand_item(save, &one))
                    return -1;
                m |= one;
                if (!comma)
                    break;
                save = comma + 1;
            }
            for (int i = 0; i < g.ntypes; i++) {
                if (!((m >> i) & 1u))
                    continue;
                cell *ce = &t->cells[r][i];
                if (ce->set || parse_cell(t, row[c], g.types[i].code, ce)) {
                    snprintf(g.why, sizeof g.why, "%s: row %s: cannot read cell '%s' (%s)",
                             t->heading, t->row_name[r], row[c], g.types[i].name);
                    return -1;
                }
                ce->set = 1;
            }
        }
        r++;
    }
    for (r = 0; r < t->nrows; r++)
        for (int i = 0; i < g.ntypes; i++)
            if (!t->cells[r][i].set) {
                snprintf(g.why, sizeof g.why, "%s: row %s: no cell for %s", t->heading,
                         t->row_name[r], g.types[i].name);
                return -1;
            }
    return 0;
}

static int parse_state_tables(const char *text)
{
    static const char *const subs[4] = {"### 7.1 ", "### 7.2 ", "### 7.3 ", "### 7.4 "};
    for (int k = 0; k < 4; k++) {
        const char *h = strstr(text, subs[k]);
        table *t = &g.tables[k];
        if (!h) {
            snprintf(g.why, sizeof g.why, "no heading '%s'", subs[k]);
            return -1;
        }
        size_t pos = (size_t)(h - text);
        next_line(text, &pos, t->heading, sizeof t->heading);
        if (strstr(t->heading, "Server role"))
            t->role = IMP_ROLE_SERVER;
        else if (strstr(t->heading, "Client role"))
            t->role = IMP_ROLE_CLIENT;
        if (strstr(t->heading, ": receive"))
            t->is_send = 0;
        else if (strstr(t->heading, ": send"))
            t->is_send = 1;
        else
            t->is_send = -1;
        if (!t->role || t->is_send < 0) {
            snprintf(g.why, sizeof g.why, "heading '%s': role or direction unknown", t->heading);
            return -1;
        }
        if (parse_table(text, pos, t) < 0 || fill_cells(text, pos, t) < 0)
            return -1;
        g.ntables++;
    }
    return 0;
}

static int load_spec(void **state)
{
    (void)state;
    if (g.loaded)
        return 0;
    char *text = slurp(IMP_SRCDIR "/protocol/SPEC.md");
    if (!text) {
        snprintf(g.why, sizeof g.why, "cannot read %s", IMP_SRCDIR "/protocol/SPEC.md");
        return 0; /* test_spec_tables_parsed reports it */
    }
    const char *sec7 = strstr(text, "## 7. Session state machine");
    if (parse_types(text) == 0 && parse_errors(text) == 0) {
        if (!sec7)
            snprintf(g.why, sizeof g.why, "no section 7");
        else if (parse_group(sec7, "APP_C", &g.app_c) == 0 &&
                 parse_group(sec7, "APP_S", &g.app_s) == 0 && parse_state_tables(text) == 0)
            g.loaded = 1;
    }
    free(text);
    return 0;
}

/* ---- valid messages of every type --------------------------------------------------------- */

static const uint8_t k_names[] = {3, 'b', 'o', 'b', 5, 'c', 'a', 'r', 'o', 'l'};
static const uint8_t k_stats[] = {3, 'm', 's', 'g', 0, 0, 0, 0, 0, 0, 0, 7};

enum { ID_HELLO = 1, ID_LOGIN = 2, ID_OTHER = 9, ID_LOGOUT = 77 };

/* A valid message of each type with every required field. */
static void build_msg(imp_msg *m, uint8_t type, uint32_t id)
{
    imp_msg_init(m, type, id);
    switch (type) {
    case IMP_HELLO:
        imp_msg_set_u(m, IMP_T_VERSION_MIN, 1);
        imp_msg_set_u(m, IMP_T_VERSION_MAX, 1);
        break;
    case IMP_WELCOME:
        imp_msg_set_u(m, IMP_T_VERSION, 1);
        imp_msg_set_u(m, IMP_T_MAX_FRAME, IMP_DEFAULT_MAX_FRAME);
        imp_msg_set_u(m, IMP_T_MAX_FRAME_PREAUTH, IMP_DEFAULT_MAX_PREAUTH);
        imp_msg_set_u(m, IMP_T_PING_INTERVAL, 0);
        imp_msg_set_u(m, IMP_T_AUTH_TIMEOUT, 10000);
        break;
    case IMP_REGISTER:
    case IMP_LOGIN:
        imp_msg_set_s(m, IMP_T_USER, "alice");
        imp_msg_set_s(m, IMP_T_PASSWORD, "secret");
        break;
    case IMP_AUTH_OK:
        imp_msg_set_s(m, IMP_T_USER, "alice");
        imp_msg_set_u(m, IMP_T_SESSION_ID, 42);
        imp_msg_set_u(m, IMP_T_LAST_SEQ, 0);
        break;
    case IMP_LOGOUT:
    case IMP_OK:
    case IMP_ROOMS:
    case IMP_WHO:
    case IMP_STATS:
    case IMP_PING:
    case IMP_PONG:
        break;
    case IMP_ERROR:
        imp_msg_set_u(m, IMP_T_CODE, 510);
        break;
    case IMP_SEND:
        imp_msg_set_u(m, IMP_T_TARGET_KIND, IMP_TARGET_USER);
        imp_msg_set_s(m, IMP_T_TARGET, "bob");
        imp_msg_set_b(m, IMP_T_BODY, "hi", 2);
        break;
    case IMP_ACK:
        imp_msg_set_u(m, IMP_T_MSG_ID, 5);
        imp_msg_set_u(m, IMP_T_OUTCOME, IMP_OUTCOME_STORED);
        break;
    case IMP_DELIVER:
        imp_msg_set_u(m, IMP_T_TARGET_KIND, IMP_TARGET_USER);
        imp_msg_set_s(m, IMP_T_TARGET, "alice");
        imp_msg_set_b(m, IMP_T_BODY, "hi", 2);
        imp_msg_set_u(m, IMP_T_MSG_ID, 5);
        imp_msg_set_u(m, IMP_T_SEQ, 1);
        imp_msg_set_s(m, IMP_T_SENDER, "bob");
        imp_msg_set_u(m, IMP_T_TIMESTAMP, 1700000000000ull);
        break;
    case IMP_DELIVERED:
        imp_msg_set_u(m, IMP_T_SEQ, 1);
        break;
    case IMP_JOIN:
    case IMP_LEAVE:
    case IMP_MEMBERS:
    case IMP_HISTORY:
        imp_msg_set_s(m, IMP_T_ROOM, "lobby");
        break;
    case IMP_MEMBER_LIST:
        imp_msg_set_s(m, IMP_T_ROOM, "lobby");
        imp_msg_set_b(m, IMP_T_NAMES, k_names, sizeof k_names);
        break;
    case IMP_HISTORY_ITEM:
        imp_msg_set_b(m, IMP_T_BODY, "hi", 2);
        imp_msg_set_u(m, IMP_T_MSG_ID, 5);
        imp_msg_set_s(m, IMP_T_SENDER, "bob");
        imp_msg_set_u(m, IMP_T_TIMESTAMP, 1700000000000ull);
        imp_msg_set_s(m, IMP_T_ROOM, "lobby");
        break;
    case IMP_ROOM_LIST:
    case IMP_SUBSCRIBE:
    case IMP_WHO_LIST:
        imp_msg_set_b(m, IMP_T_NAMES, k_names, sizeof k_names);
        break;
    case IMP_PRESENCE:
        imp_msg_set_u(m, IMP_T_STATUS, IMP_STATUS_AWAY);
        break;
    case IMP_PRESENCE_EVENT:
        imp_msg_set_s(m, IMP_T_USER, "bob");
        imp_msg_set_u(m, IMP_T_STATUS, IMP_STATUS_ONLINE);
        break;
    case IMP_STATS_REPLY:
        imp_msg_set_b(m, IMP_T_STATS, k_stats, sizeof k_stats);
        break;
    case IMP_MONITOR:
        imp_msg_set_u(m, IMP_T_ENABLE, 1);
        break;
    case IMP_MONITOR_EVENT:
        imp_msg_set_u(m, IMP_T_TIMESTAMP, 1700000000000ull);
        imp_msg_set_s(m, IMP_T_EVENT, "login");
        break;
    default:
        fail_msg("build_msg: type %#x unknown to the test", type);
    }
    assert_int_equal(imp_msg_validate(m), 0);
}

static size_t encode(const imp_msg *m, uint8_t *buf, size_t cap)
{
    imp_ssize n = imp_msg_encode(m, buf, cap);
    assert_true(n >= (imp_ssize)IMP_HEADER_SIZE);
    return (size_t)n;
}

/* ---- driving connections ------------------------------------------------------------------ */

static void drain(imp_conn *c)
{
    const uint8_t *p;
    size_t n = imp_conn_pending_output(c, &p);
    imp_conn_consume_output(c, n);
    assert_int_equal(imp_conn_pending_output(c, &p), 0);
}

static void feed_msg(imp_conn *c, const imp_msg *m)
{
    uint8_t buf[512];
    size_t n = encode(m, buf, sizeof buf);
    assert_int_equal(imp_conn_feed(c, buf, n), (imp_ssize)n);
}

/* Feed m and expect it back as an event, in state want afterwards. */
static void drive_rx(imp_conn *c, const imp_msg *m, imp_state want)
{
    imp_msg ev;
    feed_msg(c, m);
    assert_int_equal(imp_conn_next_event(c, &ev), 1);
    assert_int_equal(ev.type, m->type);
    assert_int_equal(imp_conn_state(c), want);
}

static void drive_tx(imp_conn *c, const imp_msg *m, imp_state want)
{
    assert_int_equal(imp_conn_send(c, m), 0);
    assert_int_equal(imp_conn_state(c), want);
}

typedef struct fixture {
    imp_conn *c;
    uint32_t hello_id; /* the client's HELLO request id (the WELCOME must echo it) */
} fixture;

/* The request id of the first frame in the pending output, which must be of type `type`. */
static uint32_t first_output_id(imp_conn *c, uint8_t type)
{
    const uint8_t *p;
    imp_frame f;
    size_t n = imp_conn_pending_output(c, &p);
    assert_true(imp_frame_parse(p, n, IMP_FRAME_MAX_HARD, &f, NULL) > 0);
    assert_int_equal(f.type, type);
    return f.request_id;
}

/* A connection of `role` in state `st`, output drained. route selects how CLOSING is reached:
 * 0 = the orderly way (server: LOGOUT received in READY, and with deferred LOGOUT its OK sent
 *     then; client: OK for its LOGOUT),
 * 1 = by a fatal error (server: it sends a fatal ERROR; client: it receives one).
 * defer: a server connection with deferred LOGOUT on (IMP-SESS-008), set right after creation
 * (LOGOUT_RCVD is reached only so). */
static void conn_at(fixture *fx, imp_role role, imp_state st, int route, int defer)
{
    imp_config cfg;
    imp_msg m;
    imp_config_default(&cfg, role);
    memset(fx, 0, sizeof *fx);
    fx->c = imp_conn_new(role, &cfg, 0);
    assert_non_null(fx->c);
    imp_conn *c = fx->c;
    if (defer) {
        assert_int_equal(role, IMP_ROLE_SERVER);
        assert_int_equal(imp_conn_set_defer_logout(c, 1), 0);
    }
    assert_true(defer || st != IMP_S_LOGOUT_RCVD);
    if (role == IMP_ROLE_SERVER) {
        assert_int_equal(imp_conn_state(c), IMP_S_AWAIT_HELLO);
        if (st == IMP_S_AWAIT_HELLO)
            goto done;
        build_msg(&m, IMP_HELLO, ID_HELLO);
        drive_rx(c, &m, IMP_S_AWAIT_AUTH);
        if (st == IMP_S_AWAIT_AUTH)
            goto done;
        if (st == IMP_S_CLOSING && route == 1) {
            build_msg(&m, IMP_ERROR, 0);
            imp_msg_set_u(&m, IMP_T_CODE, 730); /* SHUTDOWN: fatal */
            drive_tx(c, &m, IMP_S_CLOSING);
            goto done;
        }
        build_msg(&m, IMP_LOGIN, ID_LOGIN);
        drive_rx(c, &m, IMP_S_AUTHENTICATING);
        if (st == IMP_S_AUTHENTICATING)
            goto done;
        build_msg(&m, IMP_AUTH_OK, ID_LOGIN);
        drive_tx(c, &m, IMP_S_READY);
        if (st == IMP_S_READY)
            goto done;
        build_msg(&m, IMP_LOGOUT, ID_LOGOUT);
        drive_rx(c, &m, defer ? IMP_S_LOGOUT_RCVD : IMP_S_CLOSING);
        if (st == IMP_S_LOGOUT_RCVD)
            goto done;
        assert_int_equal(st, IMP_S_CLOSING);
        if (defer) {
            build_msg(&m, IMP_OK, ID_LOGOUT);
            drive_tx(c, &m, IMP_S_CLOSING);
        }
    } else {
        assert_int_equal(imp_conn_state(c), IMP_S_HELLO_SENT);
        fx->hello_id = first_output_id(c, IMP_HELLO);
        if (st == IMP_S_HELLO_SENT)
            goto done;
        build_msg(&m, IMP_WELCOME, fx->hello_id);
        drive_rx(c, &m, IMP_S_CONNECTED);
        if (st == IMP_S_CONNECTED)
            goto done;
        if (st == IMP_S_CLOSING && route == 1) {
            build_msg(&m, IMP_ERROR, 0);
            imp_msg_set_u(&m, IMP_T_CODE, 730);
            drive_rx(c, &m, IMP_S_CLOSING);
            goto done;
        }
        build_msg(&m, IMP_LOGIN, ID_LOGIN);
        drive_tx(c, &m, IMP_S_AUTH_SENT);
        if (st == IMP_S_AUTH_SENT)
            goto done;
        build_msg(&m, IMP_AUTH_OK, ID_LOGIN);
        drive_rx(c, &m, IMP_S_READY);
        if (st == IMP_S_READY)
            goto done;
        build_msg(&m, IMP_LOGOUT, ID_LOGOUT);
        drive_tx(c, &m, IMP_S_LOGOUT_SENT);
        if (st == IMP_S_LOGOUT_SENT)
            goto done;
        assert_int_equal(st, IMP_S_CLOSING);
        build_msg(&m, IMP_OK, ID_LOGOUT);
        drive_rx(c, &m, IMP_S_CLOSING);
    }
done:
    assert_int_equal(imp_conn_state(c), st);
    drain(c);
}

/* The frames in the pending output, decoded (views into the output: valid until it changes). */
typedef struct outlist {
    imp_msg m[8];
    int n;
    int bad; /* undecodable output */
} outlist;

static void out_decode(const imp_conn *c, outlist *o)
{
    const uint8_t *p;
    size_t len = imp_conn_pending_output(c, &p), off = 0;
    memset(o, 0, sizeof *o);
    while (off < len) {
        imp_frame f;
        imp_ssize r = imp_frame_parse(p + off, len - off, IMP_FRAME_MAX_HARD, &f, NULL);
        if (r <= 0 || o->n == 8 || imp_msg_decode(&f, &o->m[o->n]) != 0) {
            o->bad = 1;
            return;
        }
        o->n++;
        off += (size_t)r;
    }
}

/* ---- checking cells ----------------------------------------------------------------------- */

typedef struct ctx {
    const table *t;
    int row;
    int ti; /* type index */
    const char *variant;
    int defer; /* server: deferred LOGOUT on (IMP-SESS-008) */
    unsigned failures;
} ctx;

static void PRINTF_LIKE(2, 3) cell_fail(ctx *x, const char *fmt, ...)
{
    va_list ap;
    char msg[512];
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    print_error("%s | %s | %s [%s%s] cell '%s': %s\n", x->t->heading, x->t->row_name[x->row],
                g.types[x->ti].name, x->variant, x->defer ? ", deferred LOGOUT" : "",
                x->t->cells[x->row][x->ti].text, msg);
    x->failures++;
}

static void action_str(const action *a, imp_state cur, char *buf, size_t len)
{
    switch (a->kind) {
    case A_IGNORE:
        snprintf(buf, len, "ignore");
        break;
    case A_SAME:
        snprintf(buf, len, "= (%s)", state_str(cur));
        break;
    case A_STATE:
        snprintf(buf, len, "%s", state_str(a->st));
        break;
    case A_ERROR:
        snprintf(buf, len, "error %s", err_str(a->err));
        break;
    default:
        snprintf(buf, len, "?");
    }
}

/* Feed `m` (or the raw frame raw[0..rawlen) when raw != NULL) to a connection in the row's state
 * and compare with action a; auto_type is the frame the library must queue by itself (0: none)
 * when the frame is accepted. */
static void rx_variant(ctx *x, int route, const imp_msg *m, const uint8_t *raw, size_t rawlen,
                       const action *a, uint8_t auto_type)
{
    const table *t = x->t;
    imp_state st = t->row_state[x->row];
    fixture fx;
    uint8_t buf[512];
    size_t n;
    imp_msg ev;
    outlist o;
    char want[64];

    g.checks++;
    conn_at(&fx, t->role, st, route, x->defer);
    imp_conn *c = fx.c;
    if (raw) {
        memcpy(buf, raw, rawlen);
        n = rawlen;
    } else {
        n = encode(m, buf, sizeof buf);
    }
    uint8_t type = buf[1];
    if (type == IMP_WELCOME && t->role == IMP_ROLE_CLIENT) {
        /* IMP-FRAME-007: the WELCOME answers the client's HELLO */
        buf[8] = (uint8_t)(fx.hello_id >> 24);
        buf[9] = (uint8_t)(fx.hello_id >> 16);
        buf[10] = (uint8_t)(fx.hello_id >> 8);
        buf[11] = (uint8_t)fx.hello_id;
    }
    uint32_t id =
        (uint32_t)buf[8] << 24 | (uint32_t)buf[9] << 16 | (uint32_t)buf[10] << 8 | buf[11];
    int err_before = imp_conn_error(c);
    action_str(a, st, want, sizeof want);

    imp_ssize fr = imp_conn_feed(c, buf, n);
    if (fr != (imp_ssize)n && !(err_before && fr == err_before)) {
        cell_fail(x, "want %s: feed of %zu bytes returned %td", want, n, fr);
        goto out;
    }
    int r = imp_conn_next_event(c, &ev);
    imp_state after = imp_conn_state(c);
    out_decode(c, &o);
    if (o.bad) {
        cell_fail(x, "want %s: the output does not decode", want);
        goto out;
    }
    switch (a->kind) {
    case A_IGNORE:
        /* IMP-SESS-003: no event, no state change, nothing sent; a connection that failed
         * before keeps reporting its own error. */
        if (r != 0 && !(err_before && r == err_before))
            cell_fail(x, "want ignore: next_event returned %d (%s)", r,
                      r < 0    ? err_str(r)
                      : r == 1 ? type_str(ev.type)
                               : "");
        if (after != st)
            cell_fail(x, "want ignore: state %s after it", state_str(after));
        if (o.n)
            cell_fail(x, "want ignore: %d frame(s) queued, first %s", o.n, type_str(o.m[0].type));
        if (imp_conn_error(c) != err_before)
            cell_fail(x, "want ignore: error changed to %d", imp_conn_error(c));
        /* CLOSING wants the transport closed; LOGOUT_RCVD still has answers to send */
        if (imp_conn_want_close(c) != (st == IMP_S_CLOSING))
            cell_fail(x, "want ignore: want_close is %d in %s", imp_conn_want_close(c),
                      state_str(st));
        break;
    case A_SAME:
    case A_STATE: {
        imp_state next = a->kind == A_SAME ? st : a->st;
        if (r != 1) {
            cell_fail(x, "want event %s, %s: next_event returned %d (%s)", type_str(type), want, r,
                      err_str(r));
            break;
        }
        if (ev.type != type || ev.request_id != id)
            cell_fail(x, "want event %s id %u, got %s id %u", type_str(type), id, type_str(ev.type),
                      ev.request_id);
        if (after != next)
            cell_fail(x, "want state %s, got %s", state_str(next), state_str(after));
        if (auto_type) {
            /* IMP-FRAME-007: WELCOME, PONG and OK carry the request id they answer. */
            if (o.n != 1 || o.m[0].type != auto_type || o.m[0].request_id != id)
                cell_fail(x, "want exactly (auto %s id %u) queued, got %d frame(s), first %s id %u",
                          type_str(auto_type), id, o.n, o.n ? type_str(o.m[0].type) : "-",
                          o.n ? o.m[0].request_id : 0);
        } else if (o.n) {
            cell_fail(x, "want nothing queued, got %d frame(s), first %s", o.n,
                      type_str(o.m[0].type));
        }
        if (next == IMP_S_CLOSING) {
            if (!imp_conn_want_close(c))
                cell_fail(x, "CLOSING but want_close is 0");
        } else {
            if (imp_conn_want_close(c))
                cell_fail(x, "want_close is 1 in %s", state_str(after));
            if (imp_conn_error(c))
                cell_fail(x, "error %d set in %s", imp_conn_error(c), state_str(after));
        }
        break;
    }
    case A_ERROR: {
        /* A fatal protocol violation: reported, sticky, ERROR(code) queued, CLOSING. */
        if (r != a->err) {
            cell_fail(x, "want %s: next_event returned %d (%s%s)", want, r, r < 0 ? err_str(r) : "",
                      r == 1 ? type_str(ev.type) : "");
            break;
        }
        if (after != IMP_S_CLOSING)
            cell_fail(x, "want CLOSING after %s, got %s", want, state_str(after));
        if (imp_conn_error(c) != a->err)
            cell_fail(x, "imp_conn_error %d, want %d", imp_conn_error(c), a->err);
        if (!imp_conn_want_close(c))
            cell_fail(x, "want_close is 0 after a fatal error");
        if (o.n != 1 || o.m[0].type != IMP_ERROR ||
            imp_msg_u(&o.m[0], IMP_T_CODE, 0) != (uint64_t)-a->err)
            cell_fail(x, "want exactly ERROR %d queued, got %d frame(s), first %s code %lu",
                      -a->err, o.n, o.n ? type_str(o.m[0].type) : "-",
                      o.n ? (unsigned long)imp_msg_u(&o.m[0], IMP_T_CODE, 0) : 0ul);
        if (imp_conn_next_event(c, &ev) != a->err)
            cell_fail(x, "the error is not sticky");
        break;
    }
    default:
        cell_fail(x, "bad action");
    }
out:
    imp_conn_free(c);
}

/* A frame of the type whose payload is one field with tag 0: decoding it fails with ZERO_TAG
 * (IMP-FIELD-002), so the result shows whether the payload was looked at. */
static size_t bad_payload_frame(uint8_t type, uint32_t id, uint8_t *buf)
{
    imp_frame_header_write(buf, type, 6, id);
    memset(buf + IMP_HEADER_SIZE, 0, 6);
    return IMP_HEADER_SIZE + 6;
}

/* The request id of a frame fed in a cell (a WELCOME gets the client's HELLO id instead, see
 * rx_variant). */
static uint32_t rx_request_id(uint8_t type)
{
    switch (type) {
    case IMP_HELLO:
        return ID_HELLO;
    case IMP_REGISTER:
    case IMP_LOGIN:
    case IMP_AUTH_OK:
    case IMP_ERROR:
        return ID_LOGIN;
    case IMP_LOGOUT:
        return ID_LOGOUT;
    default:
        return ID_OTHER;
    }
}

static const int k_fatal_code = 730;              /* SHUTDOWN */
static const int k_nonfatal_codes[] = {400, 505}; /* AUTH_FAILED, TOO_LARGE */

static void check_rx_cell(ctx *x, int route)
{
    const table *t = x->t;
    const cell *ce = &t->cells[x->row][x->ti];
    uint8_t type = g.types[x->ti].code;
    imp_msg m;
    uint8_t raw[64];
    uint32_t id = rx_request_id(type);
    /* IMP-SESS-008: with deferred LOGOUT a cell "…, X if deferred" means X, nothing sent */
    int deferred = x->defer && ce->has_deferred;
    const action *normal = deferred ? &ce->deferred : &ce->normal;
    uint8_t auto_type = deferred ? 0 : ce->auto_type;

    if (type == IMP_ERROR) {
        build_msg(&m, IMP_ERROR, id);
        imp_msg_set_u(&m, IMP_T_CODE, (uint64_t)k_fatal_code);
        x->variant = "fatal code 730";
        rx_variant(x, route, &m, NULL, 0, ce->has_fatal ? &ce->fatal : normal, 0);
        for (size_t i = 0; i < sizeof k_nonfatal_codes / sizeof k_nonfatal_codes[0]; i++) {
            imp_msg_set_u(&m, IMP_T_CODE, (uint64_t)k_nonfatal_codes[i]);
            x->variant = i == 0 ? "non-fatal code 400" : "non-fatal code 505";
            rx_variant(x, route, &m, NULL, 0, normal, 0);
        }
    } else if (ce->has_cond) {
        build_msg(&m, type, ID_LOGOUT);
        x->variant = "LOGOUT's id";
        rx_variant(x, route, &m, NULL, 0, normal, auto_type);
        build_msg(&m, type, ID_LOGIN);
        x->variant = "another id";
        rx_variant(x, route, &m, NULL, 0, &ce->cond_else, auto_type);
    } else {
        build_msg(&m, type, id);
        x->variant = "valid frame";
        rx_variant(x, route, &m, NULL, 0, normal, auto_type);
    }
    if (ce->alt_err) {
        /* IMP-MSG-002: the only condition named this way is VERSION, for HELLO */
        if (ce->alt_err != IMP_ERR_VERSION || type != IMP_HELLO) {
            cell_fail(x, "annotation %s" ARROW "fatal on %s: not understood by the test",
                      err_str(ce->alt_err), type_str(type));
        } else {
            action a = {A_ERROR, IMP_S_CLOSING, ce->alt_err};
            build_msg(&m, IMP_HELLO, ID_HELLO);
            imp_msg_set_u(&m, IMP_T_VERSION_MIN, 2);
            imp_msg_set_u(&m, IMP_T_VERSION_MAX, 3);
            x->variant = "HELLO versions 2-3";
            rx_variant(x, route, &m, NULL, 0, &a, 0);
        }
    }
    /* IMP-SESS-002: the table is consulted on the header, before the payload is decoded. A
     * refused or ignored frame gives the table's result whatever its payload; an accepted one
     * is decoded, so its bad payload fails with ZERO_TAG. */
    {
        action a = *normal, zero = {A_ERROR, IMP_S_CLOSING, IMP_ERR_ZERO_TAG};
        const action *want = (a.kind == A_ERROR || a.kind == A_IGNORE) ? &a : &zero;
        size_t n = bad_payload_frame(type, id, raw);
        x->variant = "payload with tag 0";
        rx_variant(x, route, NULL, raw, n, want, 0);
    }
}

/* The request id of a frame sent in a cell: responses answer LOGIN (the outstanding request). */
static uint32_t tx_request_id(uint8_t type)
{
    switch (type) {
    case IMP_AUTH_OK:
    case IMP_ERROR:
        return ID_LOGIN;
    case IMP_LOGOUT:
        return ID_LOGOUT;
    case IMP_HELLO:
        return ID_HELLO;
    default:
        return ID_OTHER;
    }
}

static void tx_variant(ctx *x, int route, const imp_msg *m, const action *a)
{
    const table *t = x->t;
    imp_state st = t->row_state[x->row];
    fixture fx;
    uint8_t buf[512];
    char want[64];
    const uint8_t *p;

    g.checks++;
    conn_at(&fx, t->role, st, route, x->defer);
    imp_conn *c = fx.c;
    int err_before = imp_conn_error(c);
    action_str(a, st, want, sizeof want);
    size_t n = encode(m, buf, sizeof buf);
    int r = imp_conn_send(c, m);
    imp_state after = imp_conn_state(c);
    size_t out = imp_conn_pending_output(c, &p);
    switch (a->kind) {
    case A_SAME:
    case A_STATE: {
        imp_state next = a->kind == A_SAME ? st : a->st;
        if (r != 0) {
            cell_fail(x, "want %s: send returned %d (%s)", want, r, err_str(r));
            break;
        }
        if (after != next)
            cell_fail(x, "want state %s, got %s", state_str(next), state_str(after));
        if (out != n || memcmp(p, buf, n) != 0)
            cell_fail(x, "the output (%zu bytes) is not exactly the frame sent (%zu bytes)", out,
                      n);
        if (next == IMP_S_CLOSING && !imp_conn_want_close(c))
            cell_fail(x, "CLOSING but want_close is 0");
        if (next != IMP_S_CLOSING && imp_conn_want_close(c))
            cell_fail(x, "want_close is 1 in %s", state_str(after));
        break;
    }
    case A_ERROR:
        /* NOT_ALLOWED, CLOSED: refused, nothing changes, nothing queued, not sticky */
        if (r != a->err)
            cell_fail(x, "want %s: send returned %d (%s)", want, r, r ? err_str(r) : "queued");
        if (after != st)
            cell_fail(x, "refused, yet the state is %s", state_str(after));
        if (out != 0)
            cell_fail(x, "refused, yet %zu bytes were queued", out);
        if (imp_conn_error(c) != err_before)
            cell_fail(x, "refused, yet the connection error changed to %d", imp_conn_error(c));
        break;
    default:
        cell_fail(x, "bad action in a send table");
    }
    imp_conn_free(c);
}

static void check_tx_cell(ctx *x, int route)
{
    const cell *ce = &x->t->cells[x->row][x->ti];
    uint8_t type = g.types[x->ti].code;
    imp_msg m;
    build_msg(&m, type, tx_request_id(type));
    if (type == IMP_ERROR) {
        imp_msg_set_u(&m, IMP_T_CODE, (uint64_t)k_fatal_code);
        x->variant = "fatal code 730";
        tx_variant(x, route, &m, ce->has_fatal ? &ce->fatal : &ce->normal);
        for (size_t i = 0; i < sizeof k_nonfatal_codes / sizeof k_nonfatal_codes[0]; i++) {
            imp_msg_set_u(&m, IMP_T_CODE, (uint64_t)k_nonfatal_codes[i]);
            x->variant = i == 0 ? "non-fatal code 400" : "non-fatal code 505";
            tx_variant(x, route, &m, &ce->normal);
        }
    } else if (ce->has_cond) {
        /* IMP-SESS-008: the OK that answers the deferred LOGOUT closes, any other OK does not */
        build_msg(&m, type, ID_LOGOUT);
        x->variant = "LOGOUT's id";
        tx_variant(x, route, &m, &ce->normal);
        build_msg(&m, type, ID_OTHER);
        x->variant = "another id";
        tx_variant(x, route, &m, &ce->cond_else);
    } else {
        x->variant = "valid frame";
        tx_variant(x, route, &m, &ce->normal);
    }
}

static void check_table(int k)
{
    assert_true(g.loaded);
    const table *t = &g.tables[k];
    ctx x;
    unsigned long cells = 0;
    memset(&x, 0, sizeof x);
    x.t = t;
    for (x.row = 0; x.row < t->nrows; x.row++)
        for (x.ti = 0; x.ti < g.ntypes; x.ti++) {
            imp_state st = t->row_state[x.row];
            /* a server's cells with deferred LOGOUT off and on (IMP-SESS-008); LOGOUT_RCVD
             * exists only with it on */
            for (x.defer = 0; x.defer <= (t->role == IMP_ROLE_SERVER); x.defer++) {
                if (!x.defer && st == IMP_S_LOGOUT_RCVD)
                    continue;
                /* CLOSING is checked on both ways of reaching it */
                int routes = st == IMP_S_CLOSING ? 2 : 1;
                for (int route = 0; route < routes; route++) {
                    if (t->is_send)
                        check_tx_cell(&x, route);
                    else
                        check_rx_cell(&x, route);
                }
            }
            cells++;
        }
    g.cells_checked += cells;
    print_message("%s: %lu cells (%d states x %d types) checked, %u mismatches\n", t->heading,
                  cells, t->nrows, g.ntypes, x.failures);
    assert_int_equal(cells, (unsigned long)t->nrows * IMP_TYPE_COUNT);
    if (x.failures)
        fail_msg("%s: %u mismatches with SPEC.md", t->heading, x.failures);
}

/* ---- tests -------------------------------------------------------------------------------- */

/* The tables parse, and their columns together cover all 31 frame types exactly once. The
 * frame types of section 5 are those of frame.h. IMP-SESS-002 (every cell is normative). */
static void test_spec_tables_parsed(void **state)
{
    (void)state;
    if (!g.loaded)
        fail_msg("SPEC.md: %s", g.why);
    assert_int_equal(g.ntypes, IMP_TYPE_COUNT);
    assert_int_equal(g.ntables, 4);
    for (int i = 0; i < g.ntypes; i++) {
        assert_int_equal(g.types[i].code, imp_type_at((unsigned)i));
        assert_string_equal(g.types[i].name, imp_type_name(g.types[i].code));
        assert_int_equal(g.types[i].dir, imp_type_dir(g.types[i].code));
    }
    /* APP_C are client requests, APP_S server frames; disjoint, 12 and 10 types */
    assert_int_equal(g.app_c & g.app_s, 0);
    int nc = 0, ns = 0;
    for (int i = 0; i < g.ntypes; i++) {
        if ((g.app_c >> i) & 1u) {
            nc++;
            assert_int_equal(g.types[i].dir, IMP_DIR_C2S);
        }
        if ((g.app_s >> i) & 1u) {
            ns++;
            assert_int_equal(g.types[i].dir, IMP_DIR_S2C);
        }
    }
    assert_int_equal(nc, 12);
    assert_int_equal(ns, 10);
    /* 7.1 server receive, 7.2 server send, 7.3 client receive, 7.4 client send */
    assert_int_equal(g.tables[0].role, IMP_ROLE_SERVER);
    assert_int_equal(g.tables[0].is_send, 0);
    assert_int_equal(g.tables[1].role, IMP_ROLE_SERVER);
    assert_int_equal(g.tables[1].is_send, 1);
    assert_int_equal(g.tables[2].role, IMP_ROLE_CLIENT);
    assert_int_equal(g.tables[2].is_send, 0);
    assert_int_equal(g.tables[3].role, IMP_ROLE_CLIENT);
    assert_int_equal(g.tables[3].is_send, 1);
    for (int k = 0; k < 4; k++)
        for (int r = 0; r < g.tables[k].nrows; r++)
            for (int i = 0; i < g.ntypes; i++)
                assert_true(g.tables[k].cells[r][i].set);
}

/* IMP-SESS-001: each role has exactly the states of its tables; both tables of a role list the
 * same states; a server starts in AWAIT_HELLO, a client in HELLO_SENT with HELLO queued. */
static void test_role_states(void **state)
{
    (void)state;
    assert_true(g.loaded);
    for (int k = 0; k < 4; k += 2) {
        const table *rx = &g.tables[k], *tx = &g.tables[k + 1];
        assert_int_equal(rx->nrows, tx->nrows);
        for (int r = 0; r < rx->nrows; r++) {
            assert_int_equal(rx->row_state[r], tx->row_state[r]);
            assert_string_equal(imp_state_name(rx->row_state[r]), rx->row_name[r]);
        }
    }
    assert_int_equal(g.tables[0].nrows, 6); /* server, LOGOUT_RCVD included (IMP-SESS-008) */
    assert_int_equal(g.tables[2].nrows, 6); /* client */
    /* every state of conn.h belongs to at least one role, and names round-trip */
    for (size_t i = 0; i < NSTATES; i++) {
        int found = 0;
        for (int k = 0; k < 4; k += 2)
            for (int r = 0; r < g.tables[k].nrows; r++)
                found |= g.tables[k].row_state[r] == k_states[i].st;
        assert_true(found);
        assert_string_equal(imp_state_name(k_states[i].st), k_states[i].name);
    }
    assert_null(imp_state_name((imp_state)IMP_STATE_COUNT));

    imp_config cfg;
    imp_config_default(&cfg, IMP_ROLE_SERVER);
    imp_conn *s = imp_conn_new(IMP_ROLE_SERVER, &cfg, 0);
    assert_non_null(s);
    assert_int_equal(imp_conn_state(s), g.tables[0].row_state[0]);
    assert_int_equal(imp_conn_state(s), IMP_S_AWAIT_HELLO);
    assert_int_equal(imp_conn_role(s), IMP_ROLE_SERVER);
    const uint8_t *p;
    assert_int_equal(imp_conn_pending_output(s, &p), 0);
    imp_conn_free(s);
    imp_config_default(&cfg, IMP_ROLE_CLIENT);
    imp_conn *c = imp_conn_new(IMP_ROLE_CLIENT, &cfg, 0);
    assert_non_null(c);
    assert_int_equal(imp_conn_state(c), g.tables[2].row_state[0]);
    assert_int_equal(imp_conn_state(c), IMP_S_HELLO_SENT);
    assert_int_equal(imp_conn_role(c), IMP_ROLE_CLIENT);
    (void)first_output_id(c, IMP_HELLO);
    imp_conn_free(c);
}

/* 7.1 — IMP-SESS-002, IMP-SESS-003, IMP-SESS-004, IMP-SESS-008 (LOGOUT deferred: no OK by
 * itself, LOGOUT_RCVD ignores input), IMP-MSG-001, IMP-MSG-002, IMP-MSG-005,
 * IMP-SEC-001 (only the frames of IMP-SESS-004 before authentication), IMP-SEC-003 (every
 * request that names a user or room, APP_C, fails with NOT_AUTHENTICATED before AUTH_OK). */
static void test_table_server_receive(void **state)
{
    (void)state;
    check_table(0);
}

/* 7.2 — IMP-SESS-002, IMP-SESS-003, IMP-SESS-008 (LOGOUT_RCVD: answers still sent, the OK with
 * LOGOUT's id closes), IMP-SESS-005 (a non-fatal ERROR answering LOGIN returns the
 * server to AWAIT_AUTH), IMP-ERR-002 (a fatal ERROR closes). */
static void test_table_server_send(void **state)
{
    (void)state;
    check_table(1);
}

/* 7.3 — IMP-SESS-002, IMP-SESS-003, IMP-SESS-005 (client back to CONNECTED), IMP-SESS-007
 * (LOGOUT_SENT still receives, closes on the OK with LOGOUT's id), IMP-MSG-001, IMP-ERR-002. */
static void test_table_client_receive(void **state)
{
    (void)state;
    check_table(2);
}

/* 7.4 — IMP-SESS-002, IMP-SESS-003. */
static void test_table_client_send(void **state)
{
    (void)state;
    check_table(3);
}

static void test_all_cells_counted(void **state)
{
    (void)state;
    assert_true(g.loaded);
    unsigned long want = 0;
    for (int k = 0; k < 4; k++)
        want += (unsigned long)g.tables[k].nrows * IMP_TYPE_COUNT;
    print_message("state tables: %lu cells checked (%lu sub-cases), want %lu = 31 types x "
                  "(6+6+6+6) state rows\n",
                  g.cells_checked, g.checks, want);
    assert_int_equal(want, 31ul * (6 + 6 + 6 + 6));
    assert_int_equal(g.cells_checked, want);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spec_tables_parsed),   cmocka_unit_test(test_role_states),
        cmocka_unit_test(test_table_server_receive), cmocka_unit_test(test_table_server_send),
        cmocka_unit_test(test_table_client_receive), cmocka_unit_test(test_table_client_send),
        cmocka_unit_test(test_all_cells_counted),
    };
    return cmocka_run_group_tests(tests, load_spec, NULL);
}
