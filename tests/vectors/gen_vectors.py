#!/usr/bin/env python3
"""Generate tests/vectors/valid.txt and tests/vectors/malformed.txt.

Usage: python3 tests/vectors/gen_vectors.py   (from anywhere; writes next to this script)

The tests read the generated .txt files, which are committed; rerun this script after editing
it and commit both. Only the Python standard library is used. Every vector states the one
defect it carries (malformed) or the fields it must decode to (valid); the requirement ids in
the comments are those of protocol/SPEC.md.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 1024 * 1024
HARD = 16 * MIB

# ---- the protocol tables (SPEC.md 3.1 and 5) ----------------------------------------------

TAGS = dict(
    VERSION_MIN=1, VERSION_MAX=2, VERSION=3, AGENT=4, CAPS=5, MAX_FRAME=6, MAX_FRAME_PREAUTH=7,
    PING_INTERVAL=8, AUTH_TIMEOUT=9, SERVER_TIME=10, USER=11, PASSWORD=12, TOKEN=13,
    SESSION_ID=14, LAST_SEQ=15, ADMIN=16, TARGET_KIND=17, TARGET=18, CLIENT_MSG_ID=19, CLASS=20,
    ACK_MODE=21, HEADERS=22, BODY=23, MSG_ID=24, OUTCOME=25, CODE=26, TEXT=27, DUPLICATE=28,
    RETRY_AFTER=29, SEQ=30, SENDER=31, TIMESTAMP=32, ROOM=33, NAMES=34, LIMIT=35, CURSOR=36,
    BEFORE_ID=37, MORE=38, STATUS=39, STATUS_TEXT=40, SESSIONS=41, ENABLE=42, STATS=43,
    EVENT=44, COUNT=45)

# kind, min length, max length (fixed kinds: the fixed length twice)
KINDS = dict(
    VERSION_MIN=('u16', 2, 2), VERSION_MAX=('u16', 2, 2), VERSION=('u16', 2, 2),
    AGENT=('text', 1, 64), CAPS=('names', 0, 1024), MAX_FRAME=('u32', 4, 4),
    MAX_FRAME_PREAUTH=('u32', 4, 4), PING_INTERVAL=('u32', 4, 4), AUTH_TIMEOUT=('u32', 4, 4),
    SERVER_TIME=('u64', 8, 8), USER=('name', 1, 32), PASSWORD=('bytes', 1, 1024),
    TOKEN=('bytes', 16, 64), SESSION_ID=('u64', 8, 8), LAST_SEQ=('u64', 8, 8),
    ADMIN=('bool', 1, 1), TARGET_KIND=('enum', 1, 1), TARGET=('name', 1, 32),
    CLIENT_MSG_ID=('text', 1, 64), CLASS=('enum', 1, 1), ACK_MODE=('enum', 1, 1),
    HEADERS=('headers', 0, 16384), BODY=('bytes', 0, HARD), MSG_ID=('u64', 8, 8),
    OUTCOME=('enum', 1, 1), CODE=('u16', 2, 2), TEXT=('text', 0, 512), DUPLICATE=('bool', 1, 1),
    RETRY_AFTER=('u32', 4, 4), SEQ=('u64', 8, 8), SENDER=('name', 1, 32),
    TIMESTAMP=('u64', 8, 8), ROOM=('name', 1, 32), NAMES=('names', 0, 65536),
    LIMIT=('u32', 4, 4), CURSOR=('bytes', 0, 64), BEFORE_ID=('u64', 8, 8), MORE=('bool', 1, 1),
    STATUS=('enum', 1, 1), STATUS_TEXT=('text', 0, 256), SESSIONS=('u32', 4, 4),
    ENABLE=('bool', 1, 1), STATS=('stats', 0, 65536), EVENT=('text', 1, 64),
    COUNT=('u32', 4, 4))

ENUM_MAX = dict(TARGET_KIND=(1, 3), CLASS=(0, 1), ACK_MODE=(0, 2), OUTCOME=(1, 3), STATUS=(0, 3))

TYPES = dict(
    HELLO=0x01, WELCOME=0x02, REGISTER=0x03, LOGIN=0x04, AUTH_OK=0x05, LOGOUT=0x06, OK=0x07,
    ERROR=0x08, SEND=0x10, ACK=0x11, DELIVER=0x12, DELIVERED=0x13, JOIN=0x20, LEAVE=0x21,
    MEMBERS=0x22, MEMBER_LIST=0x23, HISTORY=0x24, HISTORY_ITEM=0x25, ROOMS=0x26, ROOM_LIST=0x27,
    PRESENCE=0x30, SUBSCRIBE=0x31, PRESENCE_EVENT=0x32, WHO=0x33, WHO_LIST=0x34, STATS=0x40,
    STATS_REPLY=0x41, MONITOR=0x42, MONITOR_EVENT=0x43, PING=0x50, PONG=0x51)

C2S, S2C, BOTH = 'C2S', 'S2C', 'BOTH'
# type: (direction, [(field, required)])
SCHEMA = dict(
    HELLO=(C2S, 'VERSION_MIN R, VERSION_MAX R, AGENT O, CAPS O'),
    WELCOME=(S2C, 'VERSION R, AGENT O, CAPS O, MAX_FRAME R, MAX_FRAME_PREAUTH R, '
                  'PING_INTERVAL R, AUTH_TIMEOUT R, SERVER_TIME O'),
    REGISTER=(C2S, 'USER R, PASSWORD R'),
    LOGIN=(C2S, 'USER R, PASSWORD O, TOKEN O, LAST_SEQ O'),
    AUTH_OK=(S2C, 'USER R, TOKEN O, SESSION_ID R, LAST_SEQ R, ADMIN O'),
    LOGOUT=(C2S, ''),
    OK=(S2C, 'COUNT O, MORE O'),
    ERROR=(BOTH, 'CODE R, TEXT O, RETRY_AFTER O'),
    SEND=(C2S, 'TARGET_KIND R, TARGET O, CLIENT_MSG_ID O, CLASS O, ACK_MODE O, HEADERS O, '
               'BODY R'),
    ACK=(S2C, 'CLIENT_MSG_ID O, MSG_ID O, OUTCOME R, CODE O, TEXT O, DUPLICATE O'),
    DELIVER=(S2C, 'TARGET_KIND R, TARGET O, CLASS O, HEADERS O, BODY R, MSG_ID R, SEQ R, '
                  'SENDER R, TIMESTAMP R'),
    DELIVERED=(C2S, 'SEQ R'),
    JOIN=(C2S, 'ROOM R'),
    LEAVE=(C2S, 'ROOM R'),
    MEMBERS=(C2S, 'ROOM R, CURSOR O, LIMIT O'),
    MEMBER_LIST=(S2C, 'ROOM R, NAMES R, CURSOR O, MORE O'),
    HISTORY=(C2S, 'ROOM R, LIMIT O, BEFORE_ID O'),
    HISTORY_ITEM=(S2C, 'HEADERS O, BODY R, MSG_ID R, SENDER R, TIMESTAMP R, ROOM R'),
    ROOMS=(C2S, 'CURSOR O, LIMIT O'),
    ROOM_LIST=(S2C, 'NAMES R, CURSOR O, MORE O'),
    PRESENCE=(C2S, 'STATUS R, STATUS_TEXT O'),
    SUBSCRIBE=(C2S, 'NAMES R, ENABLE O'),
    PRESENCE_EVENT=(S2C, 'USER R, TIMESTAMP O, STATUS R, STATUS_TEXT O, SESSIONS O'),
    WHO=(C2S, 'CURSOR O, LIMIT O'),
    WHO_LIST=(S2C, 'NAMES R, CURSOR O, MORE O'),
    STATS=(C2S, ''),
    STATS_REPLY=(S2C, 'SERVER_TIME O, STATS R'),
    MONITOR=(C2S, 'ENABLE R'),
    MONITOR_EVENT=(S2C, 'USER O, TEXT O, TIMESTAMP R, EVENT R'),
    PING=(BOTH, ''),
    PONG=(BOTH, ''))


def schema(t):
    d, spec = SCHEMA[t]
    fields = []
    for part in spec.split(','):
        part = part.strip()
        if part:
            name, rq = part.split()
            fields.append((name, rq == 'R'))
    return d, fields


APP_C = ['SEND', 'DELIVERED', 'JOIN', 'LEAVE', 'MEMBERS', 'HISTORY', 'ROOMS', 'PRESENCE',
         'SUBSCRIBE', 'WHO', 'STATS', 'MONITOR']
APP_S = ['OK', 'ACK', 'DELIVER', 'MEMBER_LIST', 'HISTORY_ITEM', 'ROOM_LIST', 'PRESENCE_EVENT',
         'WHO_LIST', 'STATS_REPLY', 'MONITOR_EVENT']
C2S_TYPES = [t for t in TYPES if SCHEMA[t][0] == C2S]
S2C_TYPES = [t for t in TYPES if SCHEMA[t][0] == S2C]

# ---- encoding -----------------------------------------------------------------------------


def u8(n): return struct.pack('>B', n)
def u16(n): return struct.pack('>H', n)
def u32(n): return struct.pack('>I', n)
def u64(n): return struct.pack('>Q', n)


def enc_int(name, n):
    kind = KINDS[name][0]
    return {'u16': u16, 'u32': u32, 'u64': u64, 'bool': u8, 'enum': u8}[kind](n)


def names_list(*names):
    return b''.join(u8(len(n)) + n for n in names)


def headers_list(*kv):
    return b''.join(u8(len(k)) + k + u16(len(v)) + v for k, v in kv)


def stats_list(*nv):
    return b''.join(u8(len(n)) + n + u64(v) for n, v in nv)


def tlv(tag, value, length=None):
    return u16(tag) + u32(len(value) if length is None else length) + value


def header(ftype, plen, req=1, version=1, flags=0):
    return u8(version) + u8(ftype) + u16(flags) + u32(plen) + u32(req)


def frame(ftype, payload=b'', req=1, version=1, flags=0, plen=None):
    if isinstance(ftype, str):
        ftype = TYPES[ftype]
    return header(ftype, len(payload) if plen is None else plen, req, version, flags) + payload


class Msg:
    """An ordered list of (tag, value bytes)."""

    def __init__(self, ftype, fields=(), req=1):
        self.type = ftype
        self.req = req
        self.fields = list(fields)

    def copy(self):
        return Msg(self.type, self.fields, self.req)

    def set(self, name, value):
        tag = TAGS[name] if isinstance(name, str) else name
        if isinstance(value, int):
            value = enc_int(name, value)
        self.fields = [(t, v) for t, v in self.fields if t != tag] + [(tag, value)]
        self.fields.sort(key=lambda f: f[0])
        return self

    def drop(self, name):
        tag = TAGS[name]
        self.fields = [(t, v) for t, v in self.fields if t != tag]
        return self

    def add_raw(self, tag, value):
        """Append a field as is, without sorting (for order/duplicate defects)."""
        self.fields.append((tag, value))
        return self

    def payload(self):
        return b''.join(tlv(t, v) for t, v in self.fields)

    def bytes(self):
        return frame(self.type, self.payload(), self.req)


TS = 1700000000000


def base(t, req=1):
    """A minimal valid message of type t."""
    m = Msg(t, req=req)
    d = dict(
        HELLO=[('VERSION_MIN', 1), ('VERSION_MAX', 1)],
        WELCOME=[('VERSION', 1), ('MAX_FRAME', MIB), ('MAX_FRAME_PREAUTH', 4096),
                 ('PING_INTERVAL', 30000), ('AUTH_TIMEOUT', 10000)],
        REGISTER=[('USER', b'alice'), ('PASSWORD', b'secret')],
        LOGIN=[('USER', b'alice'), ('PASSWORD', b'secret')],
        AUTH_OK=[('USER', b'alice'), ('SESSION_ID', 1), ('LAST_SEQ', 0)],
        ERROR=[('CODE', 500)],
        SEND=[('TARGET_KIND', 1), ('TARGET', b'bob'), ('BODY', b'hi')],
        ACK=[('MSG_ID', 42), ('OUTCOME', 1)],
        DELIVER=[('TARGET_KIND', 1), ('TARGET', b'bob'), ('BODY', b'hi'), ('MSG_ID', 42),
                 ('SEQ', 1), ('SENDER', b'alice'), ('TIMESTAMP', TS)],
        DELIVERED=[('SEQ', 1)],
        JOIN=[('ROOM', b'lobby')], LEAVE=[('ROOM', b'lobby')], MEMBERS=[('ROOM', b'lobby')],
        MEMBER_LIST=[('ROOM', b'lobby'), ('NAMES', names_list(b'alice', b'bob'))],
        HISTORY=[('ROOM', b'lobby')],
        HISTORY_ITEM=[('BODY', b'hi'), ('MSG_ID', 42), ('SENDER', b'alice'), ('TIMESTAMP', TS),
                      ('ROOM', b'lobby')],
        ROOM_LIST=[('NAMES', names_list(b'lobby'))],
        PRESENCE=[('STATUS', 1)],
        SUBSCRIBE=[('NAMES', names_list(b'bob'))],
        PRESENCE_EVENT=[('USER', b'bob'), ('STATUS', 1)],
        WHO_LIST=[('NAMES', names_list(b'alice'))],
        STATS_REPLY=[('STATS', stats_list((b'connections', 3)))],
        MONITOR=[('ENABLE', 1)],
        MONITOR_EVENT=[('TIMESTAMP', TS), ('EVENT', b'login')],
    ).get(t, [])
    for name, v in d:
        m.set(name, v)
    return m


# Where each field is tested: a type that defines it (with a base message that is valid).
HOST = dict(
    VERSION_MIN='HELLO', VERSION_MAX='HELLO', VERSION='WELCOME', AGENT='HELLO', CAPS='HELLO',
    MAX_FRAME='WELCOME', MAX_FRAME_PREAUTH='WELCOME', PING_INTERVAL='WELCOME',
    AUTH_TIMEOUT='WELCOME', SERVER_TIME='WELCOME', USER='REGISTER', PASSWORD='REGISTER',
    TOKEN='AUTH_OK', SESSION_ID='AUTH_OK', LAST_SEQ='AUTH_OK', ADMIN='AUTH_OK',
    TARGET_KIND='SEND', TARGET='SEND', CLIENT_MSG_ID='SEND', CLASS='SEND', ACK_MODE='SEND',
    HEADERS='SEND', BODY='SEND', MSG_ID='ACK', OUTCOME='ACK', CODE='ERROR', TEXT='ERROR',
    DUPLICATE='ACK', RETRY_AFTER='ERROR', SEQ='DELIVERED', SENDER='DELIVER',
    TIMESTAMP='DELIVER', ROOM='JOIN', NAMES='SUBSCRIBE', LIMIT='HISTORY', CURSOR='MEMBERS',
    BEFORE_ID='HISTORY', MORE='OK', STATUS='PRESENCE_EVENT', STATUS_TEXT='PRESENCE',
    SESSIONS='PRESENCE_EVENT', ENABLE='SUBSCRIBE', STATS='STATS_REPLY', EVENT='MONITOR_EVENT',
    COUNT='OK')


def with_field(name, value, host=None):
    return base(host or HOST[name]).set(name, value)


# ---- output -------------------------------------------------------------------------------


def fmt(b):
    """Hex with the header and each well-formed field separated for reading."""
    if len(b) < 12:
        return ' '.join(b[i:i + 1].hex() for i in range(len(b)))
    parts = [b[0:1].hex(), b[1:2].hex(), b[2:4].hex(), b[4:8].hex(), b[8:12].hex()]
    rest = b[12:]
    while rest:
        if len(rest) >= 6:
            ln = struct.unpack('>I', rest[2:6])[0]
            if 6 + ln <= len(rest):
                parts.append(' ' + rest[0:2].hex() + ' ' + rest[2:6].hex() +
                             (' ' + rest[6:6 + ln].hex() if ln else ''))
                rest = rest[6 + ln:]
                continue
        parts.append(' ' + rest.hex())
        break
    return ' '.join(parts)


def xv(b):
    return 'x:' + b.hex()


class Out:
    def __init__(self, path, title):
        self.path = path
        self.lines = [title]
        self.names = set()
        self.count = 0

    def section(self, text):
        self.lines.append('')
        for line in text.strip().split('\n'):
            self.lines.append('# ' + line.strip())

    def add(self, name, ctx, data, expect, fields='', note=None):
        assert name not in self.names, name
        assert all(c.isdigit() or c.islower() or c == '_' for c in name), name
        self.names.add(name)
        if note:
            self.lines.append('# ' + note)
        line = '%s | %s | %s | %s' % (name, ctx, fmt(data), expect)
        if fields:
            line += ' | ' + fields
        self.lines.append(line)
        self.count += 1

    def write(self):
        with open(self.path, 'w') as f:
            f.write('\n'.join(self.lines) + '\n')
        print('%s: %d vectors' % (os.path.basename(self.path), self.count))


def lname(s):
    return s.lower()


# ---- valid.txt ----------------------------------------------------------------------------


def fields_of(m, extra=''):
    """Field checks for every field of a Msg (tags defined for its type only)."""
    d, spec = schema(m.type)
    defined = {TAGS[n] for n, _ in spec}
    inv = {v: k for k, v in TAGS.items()}
    out = ['REQ=%d' % m.req]
    for t, v in m.fields:
        if t not in defined:
            continue
        name = inv[t]
        kind = KINDS[name][0]
        if kind in ('u16', 'u32', 'u64', 'bool', 'enum'):
            out.append('%s=%d' % (name, int.from_bytes(v, 'big')))
        elif len(v) <= 1100:
            out.append('%s=%s' % (name, xv(v)))
        # (longer values are not repeated in the checks, to keep lines short)
    if extra:
        out.append(extra)
    return ' '.join(out)


def gen_valid():
    o = Out(os.path.join(HERE, 'valid.txt'),
            '# Valid frames: every frame type, every optional field, edge lengths, skipped\n'
            '# unknown fields, limits. Generated by gen_vectors.py: edit that, not this file.')

    seen = set()

    def ok(name, m, ctx='frame', extra='', note=None):
        seen.update((m.type, t) for t, _ in m.fields)
        o.add(name, ctx, m.bytes(), 'ok:' + m.type, fields_of(m, extra), note)

    o.section('Each type in its minimal form (IMP-FRAME-001, section 5).')
    for i, t in enumerate(TYPES):
        ok('v_min_' + lname(t), base(t, req=100 + i))

    o.section('Each type with all its optional fields (section 5, IMP-FIELD-008 order).')
    tok = bytes(range(0x41, 0x41 + 32))
    full = dict(
        HELLO=base('HELLO').set('VERSION_MAX', 3).set('AGENT', b'imsend/0.1')
        .set('CAPS', names_list(b'history', b'presence')),
        WELCOME=base('WELCOME').set('AGENT', b'imd/0.1').set('CAPS', names_list(b'history'))
        .set('SERVER_TIME', TS),
        LOGIN=base('LOGIN').set('LAST_SEQ', 77),
        AUTH_OK=base('AUTH_OK').set('TOKEN', tok).set('ADMIN', 1).set('LAST_SEQ', 12),
        OK=base('OK').set('COUNT', 20).set('MORE', 1),
        ERROR=base('ERROR').set('CODE', 506).set('TEXT', b'slow down')
        .set('RETRY_AFTER', 1500),
        SEND=base('SEND').set('CLIENT_MSG_ID', b'c-1').set('CLASS', 1).set('ACK_MODE', 2)
        .set('HEADERS', headers_list((b'Content-Type', b'text/plain'), (b'x.id', b'7')))
        .set('BODY', b'hello world'),
        ACK=base('ACK').set('CLIENT_MSG_ID', b'c-1').set('OUTCOME', 2).set('TEXT', b'')
        .set('DUPLICATE', 1),
        DELIVER=base('DELIVER').set('TARGET_KIND', 2).set('TARGET', b'lobby').set('CLASS', 1)
        .set('HEADERS', headers_list((b'k', b'v'))).set('SEQ', 0),
        MEMBERS=base('MEMBERS').set('CURSOR', b'\x00\x01\xff').set('LIMIT', 50),
        MEMBER_LIST=base('MEMBER_LIST').set('CURSOR', b'next').set('MORE', 1),
        HISTORY=base('HISTORY').set('LIMIT', 10).set('BEFORE_ID', 99),
        HISTORY_ITEM=base('HISTORY_ITEM').set('HEADERS', headers_list((b'a', b'b'))),
        ROOMS=base('ROOMS').set('CURSOR', b'c').set('LIMIT', 0),
        ROOM_LIST=base('ROOM_LIST').set('CURSOR', b'').set('MORE', 0),
        PRESENCE=base('PRESENCE').set('STATUS', 2).set('STATUS_TEXT', b'lunch \xf0\x9f\x8d\x95'),
        SUBSCRIBE=base('SUBSCRIBE').set('ENABLE', 0),
        PRESENCE_EVENT=base('PRESENCE_EVENT').set('TIMESTAMP', TS).set('STATUS', 0)
        .set('STATUS_TEXT', b'gone').set('SESSIONS', 0),
        WHO=base('WHO').set('CURSOR', b'xyz').set('LIMIT', 4294967295),
        WHO_LIST=base('WHO_LIST').set('CURSOR', b'1').set('MORE', 1),
        STATS_REPLY=base('STATS_REPLY').set('SERVER_TIME', TS),
        MONITOR_EVENT=base('MONITOR_EVENT').set('USER', b'carol').set('TEXT', b'from 10.0.0.1'),
    )
    for t, m in full.items():
        ok('v_full_' + lname(t), m)

    o.section('Cross-field variants: LOGIN by token (IMP-MSG-004), the three target kinds '
              '(IMP-MSG-006),\nACK outcomes (IMP-MSG-007).')
    ok('v_login_token', base('LOGIN').drop('PASSWORD').set('TOKEN', b'T' * 16))
    ok('v_login_token_64', base('LOGIN').drop('PASSWORD').set('TOKEN', bytes(range(64))))
    ok('v_send_room', base('SEND').set('TARGET_KIND', 2).set('TARGET', b'lobby'))
    ok('v_send_broadcast', base('SEND').set('TARGET_KIND', 3).drop('TARGET'))
    ok('v_deliver_broadcast', base('DELIVER').set('TARGET_KIND', 3).drop('TARGET'),
       extra='TARGET=absent')
    ok('v_ack_refused', base('ACK').drop('MSG_ID').set('OUTCOME', 3).set('CODE', 504))
    ok('v_ack_refused_with_msg_id', base('ACK').set('OUTCOME', 3).set('CODE', 511))
    ok('v_ack_delivered', base('ACK').set('OUTCOME', 2))

    o.section('Values at their limits (table 3.1, IMP-FIELD-006, IMP-FIELD-010).')
    ok('v_hello_version_range', base('HELLO').set('VERSION_MIN', 1).set('VERSION_MAX', 65535))
    ok('v_hello_version_equal', base('HELLO').set('VERSION_MIN', 7).set('VERSION_MAX', 7))
    ok('v_welcome_max_frame_min', base('WELCOME').set('MAX_FRAME', 4096)
       .set('MAX_FRAME_PREAUTH', 1024))
    ok('v_welcome_max_frame_hard', base('WELCOME').set('MAX_FRAME', HARD)
       .set('MAX_FRAME_PREAUTH', HARD))
    ok('v_welcome_preauth_equal', base('WELCOME').set('MAX_FRAME', 8192)
       .set('MAX_FRAME_PREAUTH', 8192))
    ok('v_welcome_zero_timers', base('WELCOME').set('PING_INTERVAL', 0).set('AUTH_TIMEOUT', 0)
       .set('SERVER_TIME', 0))
    ok('v_auth_ok_max_ids', base('AUTH_OK').set('SESSION_ID', 2**64 - 1)
       .set('LAST_SEQ', 2**64 - 1).set('ADMIN', 0))
    ok('v_error_code_1', base('ERROR').set('CODE', 1), note='IMP-MSG-009: unknown codes accepted')
    ok('v_error_code_unknown', base('ERROR').set('CODE', 999))
    ok('v_error_code_max', base('ERROR').set('CODE', 65535))
    ok('v_agent_1', base('HELLO').set('AGENT', b'a'))
    ok('v_agent_64', base('HELLO').set('AGENT', b'A' * 64))
    ok('v_agent_64_multibyte', base('HELLO').set('AGENT', '\u00e9'.encode() * 32))
    ok('v_user_32', base('REGISTER').set('USER', b'a' * 32))
    ok('v_user_1', base('REGISTER').set('USER', b'Z'))
    ok('v_user_charset', base('REGISTER').set('USER', b'0Al-ic_e.9'))
    ok('v_target_32', base('SEND').set('TARGET', b'B' * 31 + b'9'))
    ok('v_room_32', base('JOIN').set('ROOM', b'9' + b'r.-_' * 7 + b'xyz'))
    ok('v_sender_32', base('DELIVER').set('SENDER', b'S' * 32))
    ok('v_password_1', base('REGISTER').set('PASSWORD', b'\x00'))
    ok('v_password_1024', base('REGISTER').set('PASSWORD', bytes(i & 0xff for i in range(1024))))
    ok('v_token_16', base('AUTH_OK').set('TOKEN', b'\xff' * 16))
    ok('v_token_64', base('AUTH_OK').set('TOKEN', b'\x00' * 64))
    ok('v_client_msg_id_64', base('SEND').set('CLIENT_MSG_ID', b'm' * 64))
    ok('v_text_empty', base('ERROR').set('TEXT', b''))
    ok('v_text_512', base('ERROR').set('TEXT', b't' * 512))
    ok('v_text_512_4byte', base('ERROR').set('TEXT', b'\xf4\x8f\xbf\xbf' * 128))
    ok('v_status_text_empty', base('PRESENCE').set('STATUS_TEXT', b''))
    ok('v_status_text_256', base('PRESENCE').set('STATUS_TEXT', b's' * 256))
    ok('v_event_64', base('MONITOR_EVENT').set('EVENT', b'e' * 64))
    ok('v_body_empty', base('SEND').set('BODY', b''))
    ok('v_body_binary', base('SEND').set('BODY', bytes(range(256))))
    ok('v_cursor_empty', base('MEMBERS').set('CURSOR', b''))
    ok('v_cursor_64', base('MEMBERS').set('CURSOR', b'\x80' * 64))
    ok('v_presence_busy', base('PRESENCE').set('STATUS', 3))
    ok('v_presence_event_statuses', base('PRESENCE_EVENT').set('STATUS', 3)
       .set('SESSIONS', 4294967295))
    ok('v_send_enum_edges', base('SEND').set('CLASS', 0).set('ACK_MODE', 0))
    ok('v_req_zero', base('PING', req=0))
    ok('v_req_max', base('PONG', req=0xffffffff))
    ok('v_text_all_ranges', base('ERROR').set(
        'TEXT', b'\x01\x7f\xc2\x80\xdf\xbf\xe0\xa0\x80\xed\x9f\xbf\xee\x80\x80\xef\xbf\xbf'
        b'\xf0\x90\x80\x80\xf4\x8f\xbf\xbf'),
       note='IMP-TEXT-001 boundaries: U+0001 U+007F U+0080 U+07FF U+0800 U+D7FF U+E000 U+FFFF '
            'U+10000 U+10FFFF')

    o.section('Lists (IMP-FIELD-009): empty, maximum entries, maximum entry sizes.')
    ok('v_caps_empty', base('HELLO').set('CAPS', b''))
    caps = names_list(*([b'c' * 32] * 30 + [b'd' * 16, b'e' * 16]))
    assert len(caps) == 1024
    ok('v_caps_1024', base('HELLO').set('CAPS', caps))
    ok('v_names_empty', base('WHO_LIST').set('NAMES', b''))
    ok('v_names_1000', base('ROOM_LIST').set('NAMES', names_list(*([b'r'] * 1000))))
    ok('v_names_32', base('SUBSCRIBE').set('NAMES', names_list(b'N' * 32, b'0', b'a.b-c_d')))
    ok('v_headers_empty', base('SEND').set('HEADERS', b''))
    ok('v_headers_32', base('SEND').set('HEADERS', headers_list(
        *[(b'h%02d' % i, b'v') for i in range(32)])))
    ok('v_headers_key_64_value_1024', base('SEND').set('HEADERS', headers_list(
        (b'K' * 64, b'v' * 1024), (b'-', b''), (b'_.9', '\u20ac'.encode()))))
    hl = headers_list(*[(b'k%02d' % i, b'v' * 1024) for i in range(15)],
                      (b'last', b'w' * (16384 - 15 * 1030 - 7)))
    assert len(hl) == 16384
    ok('v_headers_16384', base('SEND').set('HEADERS', hl))
    ok('v_stats_empty', base('STATS_REPLY').set('STATS', b''))
    ok('v_stats_names', base('STATS_REPLY').set('STATS', stats_list(
        (b'_x', 0), (b'.y', 2**64 - 1), (b'9', 1), (b's' * 64, 5), (b'a.b_c9', 6))))
    ok('v_stats_1000', base('STATS_REPLY').set('STATS', stats_list(*[(b's', i) for i in range(1000)])))

    o.section('Unknown non-critical fields are skipped (IMP-FIELD-004), wherever they are.')
    ok('v_unknown_46', base('HELLO').add_raw(46, b'x'))
    ok('v_unknown_7fff', base('SEND').add_raw(0x7fff, b'\x00' * 10))
    ok('v_unknown_first', Msg('SEND', [(0x0000 + 16, b'\x01')] ).set('TARGET_KIND', 1)
       .set('TARGET', b'bob').set('BODY', b'hi'),
       note='tag 16 (ADMIN) is not defined for SEND: unknown, skipped even though first')
    ok('v_unknown_between', base('DELIVERED').add_raw(31, b'not a name!').add_raw(40, b'\xff'),
       extra='SENDER=absent STATUS_TEXT=absent',
       note='SENDER/STATUS_TEXT are not DELIVERED fields: their (invalid) values are not checked')
    ok('v_unknown_wrong_kind', base('HELLO').add_raw(TAGS['SEQ'], b'\x01\x02\x03'),
       extra='SEQ=absent', note='SEQ is unknown in HELLO, so its length is not checked')
    ok('v_unknown_body_in_ping', base('PING').add_raw(TAGS['BODY'], b'hello'), extra='BODY=absent')
    ok('v_unknown_empty', base('LOGOUT').add_raw(0x1234, b''))
    ok('v_unknown_several', base('PONG').add_raw(1, b'').add_raw(2, b'zz').add_raw(0x7ffe, b'q')
       .add_raw(0x7fff, b''))
    m = base('ERROR').set('CODE', 704).add_raw(0x100, b'\xc0\x80')
    ok('v_unknown_after_last', m)

    # every field of every type, optional ones included, occurs in some valid frame
    for t in TYPES:
        for name, _ in schema(t)[1]:
            assert (t, TAGS[name]) in seen, (t, name)

    o.section('Frames at a limit (IMP-FRAME-005): exactly the limit is accepted.')
    m = base('PING')
    o.add('v_limit_12_ping', 'frame:12', m.bytes(), 'ok:PING', 'REQ=1')
    m = base('SEND').set('BODY', b'b' * (100 - 12 - 7 - 9 - 6))
    assert len(m.bytes()) == 100
    o.add('v_limit_100', 'frame:100', m.bytes(), 'ok:SEND', fields_of(m))
    m = base('SEND').set('BODY', b'\x00' * (4096 - 12 - 7 - 9 - 6))
    assert len(m.bytes()) == 4096
    o.add('v_limit_4096', 'frame:4096', m.bytes(), 'ok:SEND', fields_of(m))
    o.add('v_limit_0_is_hard', 'frame:0', base('PONG').bytes(), 'ok:PONG', 'REQ=1')
    o.add('v_limit_huge_is_hard', 'frame:4294967296', base('PONG').bytes(), 'ok:PONG')
    o.add('v_two_frames_first', 'frame', base('PING', 5).bytes() + base('PONG', 6).bytes(),
          'ok:PING', 'REQ=5', note='two frames back to back: the first one is parsed')

    o.section('Through connections (section 7): frames accepted in a state, and the limits\n'
              'of IMP-SESS-006 (server: 4096 before AUTH_OK, 1 MiB after).')
    hello = base('HELLO')
    pad = 4096 - len(hello.bytes()) - 6
    m = base('HELLO').add_raw(0x1000, b'p' * pad)
    assert len(m.bytes()) == 4096
    o.add('v_srv_hello_4096', 'server:AWAIT_HELLO', m.bytes(), 'ok:HELLO',
          'VERSION_MIN=1 VERSION_MAX=1')
    o.add('v_srv_hello', 'server:AWAIT_HELLO', base('HELLO', 9).bytes(), 'ok:HELLO', 'REQ=9')
    o.add('v_srv_login', 'server:AWAIT_AUTH', base('LOGIN', 2).bytes(), 'ok:LOGIN',
          fields_of(base('LOGIN', 2)))
    o.add('v_srv_register', 'server:AWAIT_AUTH', base('REGISTER', 2).bytes(), 'ok:REGISTER')
    m = base('LOGIN').add_raw(0x1000, b'p' * (4096 - 12 - 11 - 12 - 6))
    assert len(m.bytes()) == 4096
    o.add('v_srv_login_4096', 'server:AWAIT_AUTH', m.bytes(), 'ok:LOGIN')
    o.add('v_srv_ping_await_auth', 'server:AWAIT_AUTH', base('PING', 4).bytes(), 'ok:PING',
          'REQ=4')
    o.add('v_srv_pong_await_auth', 'server:AWAIT_AUTH', base('PONG', 4).bytes(), 'ok:PONG')
    o.add('v_srv_ping_authenticating', 'server:AUTHENTICATING', base('PING').bytes(), 'ok:PING')
    o.add('v_srv_logout_await_auth', 'server:AWAIT_AUTH', base('LOGOUT', 3).bytes(), 'ok:LOGOUT')
    o.add('v_srv_logout_authenticating', 'server:AUTHENTICATING', base('LOGOUT').bytes(),
          'ok:LOGOUT')
    for t in APP_C:
        o.add('v_srv_ready_' + lname(t), 'server:READY', base(t, 11).bytes(), 'ok:' + t,
              fields_of(base(t, 11)))
    o.add('v_srv_ready_ping', 'server:READY', base('PING', 12).bytes(), 'ok:PING', 'REQ=12')
    o.add('v_srv_ready_logout', 'server:READY', base('LOGOUT', 13).bytes(), 'ok:LOGOUT')
    m = base('SEND').set('BODY', b'\x00' * (4097 - 12 - 7 - 9 - 6))
    assert len(m.bytes()) == 4097
    o.add('v_srv_ready_send_4097', 'server:READY', m.bytes(), 'ok:SEND')
    o.add('v_srv_closing_ignores_ping', 'server:CLOSING', base('PING').bytes(), 'need')
    o.add('v_srv_closing_ignores_garbage', 'server:CLOSING', b'\xff' * 20, 'need',
          note='IMP-SESS-003: CLOSING ignores all input, even invalid headers')
    o.add('v_cli_welcome', 'client:HELLO_SENT', base('WELCOME', 1).bytes(), 'ok:WELCOME',
          fields_of(base('WELCOME', 1)))
    o.add('v_cli_ping_hello_sent', 'client:HELLO_SENT', base('PING', 8).bytes(), 'ok:PING')
    o.add('v_cli_error_hello_sent', 'client:HELLO_SENT', base('ERROR', 0).bytes(), 'ok:ERROR',
          'CODE=500', note='a non-fatal ERROR is an event and leaves the state as it is')
    o.add('v_cli_auth_ok', 'client:AUTH_SENT', base('AUTH_OK', 2).bytes(), 'ok:AUTH_OK',
          fields_of(base('AUTH_OK', 2)))
    o.add('v_cli_error_auth_sent', 'client:AUTH_SENT',
          base('ERROR', 2).set('CODE', 400).bytes(), 'ok:ERROR', 'CODE=400 REQ=2')
    o.add('v_cli_pong_connected', 'client:CONNECTED', base('PONG').bytes(), 'ok:PONG')
    for t in APP_S:
        o.add('v_cli_ready_' + lname(t), 'client:READY', base(t, 0).bytes(), 'ok:' + t,
              fields_of(base(t, 0)))
    o.add('v_cli_logout_sent_deliver', 'client:LOGOUT_SENT', base('DELIVER', 0).bytes(),
          'ok:DELIVER', note='IMP-SESS-007: still receives what the server sent before LOGOUT')
    o.add('v_cli_logout_sent_auth_ok', 'client:LOGOUT_SENT', base('AUTH_OK', 2).bytes(),
          'ok:AUTH_OK')
    o.add('v_cli_logout_sent_other_ok', 'client:LOGOUT_SENT', base('OK', 77).bytes(), 'ok:OK',
          'REQ=77')
    o.add('v_cli_closing_ignores', 'client:CLOSING', base('DELIVER').bytes(), 'need')
    o.write()


# ---- malformed.txt ------------------------------------------------------------------------

BAD_UTF8 = [
    ('overlong2_c080', b'\xc0\x80'), ('overlong2_c1bf', b'\xc1\xbf'),
    ('overlong3_e08080', b'\xe0\x80\x80'), ('overlong3_e09fbf', b'\xe0\x9f\xbf'),
    ('overlong4_f0808080', b'\xf0\x80\x80\x80'), ('overlong4_f08fbfbf', b'\xf0\x8f\xbf\xbf'),
    ('surrogate_eda080', b'\xed\xa0\x80'), ('surrogate_edbfbf', b'\xed\xbf\xbf'),
    ('above_10ffff', b'\xf4\x90\x80\x80'), ('lead_f5', b'\xf5\x80\x80\x80'),
    ('lead_f8', b'\xf8\x88\x80\x80\x80'), ('lead_fe', b'\xfe'), ('lead_ff', b'\xff'),
    ('lone_cont_80', b'a\x80b'), ('lone_cont_bf', b'\xbf'),
    ('trunc2', b'ab\xc3'), ('trunc3', b'ab\xe2\x82'), ('trunc4', b'ab\xf0\x9f\x98'),
    ('bad_cont', b'\xc3\x28'), ('nul', b'\x00'), ('nul_inside', b'ab\x00cd'),
    ('cont_after_ascii', b'x\xc2\x80\x80'),
]

BAD_NAMES = [
    ('dash_first', b'-alice'), ('underscore_first', b'_alice'), ('dot_first', b'.alice'),
    ('space', b'al ice'), ('space_first', b' alice'), ('at', b'al@ice'),
    ('non_ascii', b'al\xc3\xa9'), ('slash', b'a/b'), ('colon', b'a:b'), ('del', b'ab\x7f'),
    ('nul', b'ab\x00'), ('high_byte', b'\xff'),
]


def gen_malformed():
    o = Out(os.path.join(HERE, 'malformed.txt'),
            '# Malformed input: each vector carries one defect and its expected error.\n'
            '# Generated by gen_vectors.py: edit that, not this file.')
    add = o.add

    # -- header -------------------------------------------------------------------------
    o.section('Header: version byte (IMP-FRAME-002). Header only: the error comes before any '
              'payload byte.')
    for v in (0, 2, 0x7f, 0x80, 0xff):
        add('m_version_%02x' % v, 'frame', header(0x50, 0, version=v), 'BAD_VERSION')
    add('m_version_0_with_payload', 'frame', frame('ERROR', base('ERROR').payload(), version=0),
        'BAD_VERSION')
    add('m_version_2_send', 'frame', frame('SEND', base('SEND').payload(), version=2),
        'BAD_VERSION')
    o.section('IMP-FRAME-006: checks in order version, type, flags, length.')
    add('m_order_version_type', 'frame', header(0x00, 0, version=0), 'BAD_VERSION')
    add('m_order_version_flags', 'frame', header(0x50, 0, version=2, flags=1), 'BAD_VERSION')
    add('m_order_version_length', 'frame', header(0x50, 0xffffffff, version=2), 'BAD_VERSION')
    add('m_order_version_all', 'frame', header(0xff, 0xffffffff, version=0xff, flags=0xffff),
        'BAD_VERSION')
    add('m_order_type_flags', 'frame', header(0x09, 0, flags=0x8000), 'UNKNOWN_TYPE')
    add('m_order_type_length', 'frame', header(0x09, 0xffffffff), 'UNKNOWN_TYPE')
    add('m_order_flags_length', 'frame', header(0x50, 0xffffffff, flags=1), 'RESERVED_FLAGS')

    o.section('Every undefined type value (IMP-FRAME-003).')
    known = set(TYPES.values())
    for t in range(256):
        if t not in known:
            add('m_type_%02x' % t, 'frame', header(t, 0), 'UNKNOWN_TYPE')

    o.section('Each reserved flag bit (IMP-FRAME-004).')
    for bit in range(16):
        add('m_flag_bit%d' % bit, 'frame', header(0x50, 0, flags=1 << bit), 'RESERVED_FLAGS')
    add('m_flags_all', 'frame', header(0x10, 0, flags=0xffff), 'RESERVED_FLAGS')
    add('m_flag_with_payload', 'frame', frame('SEND', base('SEND').payload(), flags=0x0100),
        'RESERVED_FLAGS')

    o.section('Frame size (IMP-FRAME-005, IMP-SEC-002): hard limit 16 MiB, checked on the header\n'
              'alone, before any payload byte is read or buffered.')
    add('m_len_ffffffff', 'frame', header(0x50, 0xffffffff), 'FRAME_TOO_LARGE')
    add('m_len_hard_plus1', 'frame', header(0x10, HARD - 11), 'FRAME_TOO_LARGE',
        note='12 + (16 MiB - 11) = 16 MiB + 1')
    add('m_len_hard_payload', 'frame', header(0x10, HARD), 'FRAME_TOO_LARGE')
    add('m_len_hard_exact_need', 'frame', header(0x10, HARD - 12), 'need',
        note='exactly 16 MiB: accepted, waiting for the payload')
    add('m_len_80000000', 'frame', header(0x12, 0x80000000), 'FRAME_TOO_LARGE')
    add('m_limit0_plus1', 'frame:0', header(0x10, HARD - 11), 'FRAME_TOO_LARGE',
        note='limit 0 means the hard limit')
    add('m_limit0_exact_need', 'frame:0', header(0x10, HARD - 12), 'need')
    add('m_limit_over_hard_plus1', 'frame:16777217', header(0x10, HARD - 11), 'FRAME_TOO_LARGE',
        note='a limit above the hard limit means the hard limit')
    add('m_limit_max_plus1', 'frame:4294967295', header(0x10, HARD - 11), 'FRAME_TOO_LARGE')
    for lim in (12, 100, 1024, 4096, 65536, MIB):
        add('m_limit%d_plus1' % lim, 'frame:%d' % lim, header(0x10, lim - 11), 'FRAME_TOO_LARGE')
        if lim > 12:
            add('m_limit%d_exact_need' % lim, 'frame:%d' % lim, header(0x10, lim - 12), 'need')
    add('m_limit100_full_plus1', 'frame:100',
        base('SEND').set('BODY', b'b' * (101 - 12 - 7 - 9 - 6)).bytes(), 'FRAME_TOO_LARGE')
    add('m_limit11_ping', 'frame:11', header(0x50, 0), 'FRAME_TOO_LARGE',
        note='a limit below the header size: even an empty frame is over it')

    o.section('Incomplete input: need (no event, no error) - IMP-FRAME-008.')
    sendb = base('SEND').bytes()
    for n in (1, 2, 4, 8, 11):
        add('m_need_header_%d' % n, 'frame', sendb[:n], 'need')
    add('m_need_header_bad_version_11', 'frame', header(0x50, 0, version=9)[:11], 'need',
        note='the header checks wait for all 12 bytes')
    add('m_need_payload_0', 'frame', sendb[:12], 'need')
    add('m_need_payload_1', 'frame', sendb[:13], 'need')
    add('m_need_payload_minus1', 'frame', sendb[:-1], 'need')
    add('m_need_payload_big', 'frame', header(0x10, 60000) + b'\x00' * 100, 'need')

    # -- fields -------------------------------------------------------------------------
    o.section('Truncation (IMP-FIELD-001, IMP-SEC-002): a field header or value past the end of the\n'
              'payload; declared lengths are checked against what remains before use.')
    hdr = u16(0x0017) + u32(2)
    for n in range(1, 6):
        add('m_trunc_fieldhdr_%d' % n, 'frame', frame('PING', hdr[:n]), 'TRUNCATED',
            note='the only field header, cut after %d byte(s)' % n)
    sp = base('SEND').payload()
    for n in range(1, 6):
        add('m_trunc_trailing_%d' % n, 'frame', frame('SEND', sp + (u16(0x7000) + u32(0))[:n]),
            'TRUNCATED', note='%d byte(s) after the last field: a partial field header' % n)
    add('m_trunc_value_short', 'frame',
        frame('SEND', base('SEND').payload()[:-1] + b''), 'TRUNCATED',
        note='BODY declares 2 bytes, 1 present')
    add('m_trunc_value_empty', 'frame',
        frame('SEND', base('SEND').drop('BODY').payload() + u16(23) + u32(1)), 'TRUNCATED')
    add('m_trunc_value_ffffffff', 'frame',
        frame('SEND', base('SEND').drop('BODY').payload() + u16(23) + u32(0xffffffff) + b'hi'),
        'TRUNCATED')
    add('m_trunc_value_plus1', 'frame',
        frame('HELLO', u16(1) + u32(2) + u16(1) + u16(2) + u32(3) + u16(1)), 'TRUNCATED')
    add('m_trunc_agent', 'frame',
        frame('HELLO', base('HELLO').payload() + u16(4) + u32(10) + b'imsend'), 'TRUNCATED')
    p = base('SEND').payload()
    add('m_trunc_next_frame_follows', 'frame',
        frame('SEND', p, plen=len(p) - 1) + p[-1:] + base('PING').bytes(), 'TRUNCATED',
        note='payload length one short: the BODY byte after it belongs to the stream, not the '
             'payload')
    add('m_trunc_unknown_field', 'frame', frame('PING', u16(0x7fff) + u32(5) + b'abcd'),
        'TRUNCATED', note='unknown fields are skipped, but must still fit')

    o.section('Tags (IMP-FIELD-002, IMP-FIELD-003, IMP-FIELD-004).')
    add('m_zero_tag_ping', 'frame', frame('PING', u16(0) + u32(0)), 'ZERO_TAG')
    add('m_zero_tag_value', 'frame', frame('PONG', u16(0) + u32(3) + b'abc'), 'ZERO_TAG')
    add('m_zero_tag_first', 'frame', frame('SEND', u16(0) + u32(0) + base('SEND').payload()),
        'ZERO_TAG')
    add('m_zero_tag_after', 'frame', frame('SEND', base('SEND').payload() + u16(0) + u32(0)),
        'ZERO_TAG', note='per field, the zero tag is checked before the order')
    add('m_dup_version_min', 'frame', frame('HELLO', tlv(1, u16(1)) + tlv(1, u16(1)) +
                                            tlv(2, u16(1))), 'DUPLICATE_FIELD')
    add('m_dup_body', 'frame', frame('SEND', base('SEND').payload() + tlv(23, b'x')),
        'DUPLICATE_FIELD')
    add('m_dup_unknown', 'frame', frame('PING', tlv(0x100, b'') + tlv(0x100, b'')),
        'DUPLICATE_FIELD', note='the order rules apply to unknown tags too')
    add('m_dup_last_defined', 'frame',
        frame('OK', tlv(45, u32(1)) + tlv(45, u32(1))), 'DUPLICATE_FIELD')
    add('m_order_version', 'frame', frame('HELLO', tlv(2, u16(1)) + tlv(1, u16(1))),
        'FIELD_ORDER')
    add('m_order_send', 'frame', frame('SEND', tlv(17, b'\x01') + tlv(23, b'hi') +
                                       tlv(18, b'bob')), 'FIELD_ORDER')
    add('m_order_unknown', 'frame', frame('PING', tlv(0x200, b'') + tlv(0x100, b'')),
        'FIELD_ORDER')
    add('m_order_after_unknown', 'frame',
        frame('DELIVERED', tlv(0x100, b'') + tlv(30, u64(1))), 'FIELD_ORDER')
    add('m_order_tag1_after_critical', 'frame', frame('PING', tlv(0x7fff, b'') + tlv(1, b'')),
        'FIELD_ORDER')
    for t, ty in ((0x8000, 'PING'), (0x8001, 'HELLO'), (0x8017, 'SEND'), (0x802e, 'LOGOUT'),
                  (0xffff, 'STATS'), (0x8100, 'OK'), (0x8017, 'HELLO')):
        m = base(ty)
        m.fields.append((t, b'v'))
        add('m_crit_%04x_%s' % (t, lname(ty)), 'frame', m.bytes(), 'UNKNOWN_CRITICAL')
    add('m_crit_empty', 'frame', frame('WHO', tlv(0x9000, b'')), 'UNKNOWN_CRITICAL')

    o.section('Missing required fields (IMP-FIELD-005): one case per required field per type.')
    for t in TYPES:
        d, fields = schema(t)
        for name, req in fields:
            if req:
                add('m_missing_%s_%s' % (lname(t), lname(name)), 'frame',
                    base(t).drop(name).bytes(), 'MISSING_FIELD')
    add('m_missing_all_deliver', 'frame', frame('DELIVER'), 'MISSING_FIELD')
    add('m_missing_with_unknown', 'frame', frame('DELIVERED', tlv(0x7000, u64(1))),
        'MISSING_FIELD', note='an unknown field never stands in for a required one')

    o.section('Fixed lengths of integer fields (IMP-FIELD-006): 0, one short, one long.')
    for name, (kind, lo, hi) in KINDS.items():
        if kind not in ('u16', 'u32', 'u64', 'bool', 'enum'):
            continue
        lens = sorted({0, lo - 1, lo + 1, 2 * lo} - {lo})
        for n in lens:
            # a value that would be valid if read as the right length
            val = b'\x00' * (n - 1) + b'\x01' if n else b''
            add('m_len_%s_%d' % (lname(name), n), 'frame',
                with_field(name, val).bytes(), 'FIELD_LENGTH')

    o.section('Variable lengths (IMP-FIELD-006): below the minimum, above the maximum.')
    cases = [
        ('AGENT', b''), ('AGENT', b'a' * 65), ('AGENT', '\u00e9'.encode() * 33),
        ('USER', b''), ('USER', b'a' * 33), ('TARGET', b''), ('TARGET', b'b' * 33),
        ('ROOM', b''), ('ROOM', b'r' * 33), ('SENDER', b''), ('SENDER', b's' * 33),
        ('PASSWORD', b''), ('PASSWORD', b'p' * 1025), ('CLIENT_MSG_ID', b''),
        ('CLIENT_MSG_ID', b'c' * 65), ('TEXT', b't' * 513), ('TEXT', b'\xe2\x82\xac' * 171),
        ('STATUS_TEXT', b's' * 257), ('EVENT', b''), ('EVENT', b'e' * 65),
        ('CURSOR', b'c' * 65),
        ('CAPS', names_list(*([b'c' * 32] * 30 + [b'd' * 16, b'e' * 17]))),
        ('HEADERS', headers_list(*[(b'k%02d' % i, b'v' * 1024) for i in range(15)],
                                 (b'last', b'w' * (16384 - 15 * 1030 - 7 + 1)))),
    ]
    assert len(cases[-2][1]) == 1025 and len(cases[-1][1]) == 16385
    for i, (name, val) in enumerate(cases):
        add('m_vlen_%s_%d_%d' % (lname(name), len(val), i), 'frame',
            with_field(name, val).bytes(), 'FIELD_LENGTH')
    for ty in ('LOGIN', 'AUTH_OK'):
        for n in (0, 1, 15, 65, 100):
            m = base(ty)
            if ty == 'LOGIN':
                m.drop('PASSWORD')
            add('m_len_token_%d_%s' % (n, lname(ty)), 'frame', m.set('TOKEN', b'T' * n).bytes(),
                'FIELD_LENGTH')
    for ty, fld in (('LOGIN', 'USER'), ('AUTH_OK', 'USER'), ('PRESENCE_EVENT', 'USER'),
                    ('MONITOR_EVENT', 'USER'), ('HISTORY_ITEM', 'SENDER'),
                    ('HISTORY_ITEM', 'ROOM'), ('MEMBER_LIST', 'ROOM'), ('LEAVE', 'ROOM'),
                    ('DELIVER', 'TARGET'), ('MEMBERS', 'ROOM'), ('HISTORY', 'ROOM')):
        add('m_len_%s_33_%s' % (lname(fld), lname(ty)), 'frame',
            base(ty).set(fld, b'n' * 33).bytes(), 'FIELD_LENGTH')
    add('m_len_text_ack_513', 'frame', base('ACK').set('TEXT', b'x' * 513).bytes(),
        'FIELD_LENGTH')
    add('m_len_status_text_event_257', 'frame',
        base('PRESENCE_EVENT').set('STATUS_TEXT', b'x' * 257).bytes(), 'FIELD_LENGTH')
    add('m_len_agent_welcome_65', 'frame', base('WELCOME').set('AGENT', b'x' * 65).bytes(),
        'FIELD_LENGTH')

    o.section('bool and enum values (IMP-FIELD-007): BAD_VALUE.')
    for name in ('ADMIN', 'DUPLICATE', 'MORE', 'ENABLE'):
        for v in (2, 0xff):
            add('m_bool_%s_%d' % (lname(name), v), 'frame', with_field(name, u8(v)).bytes(),
                'BAD_VALUE')
    add('m_bool_enable_monitor_2', 'frame', base('MONITOR').set('ENABLE', u8(2)).bytes(),
        'BAD_VALUE')
    add('m_bool_more_member_list_2', 'frame', base('MEMBER_LIST').set('MORE', u8(2)).bytes(),
        'BAD_VALUE')
    for name, (lo, hi) in ENUM_MAX.items():
        vals = sorted({hi + 1, 0xff} | ({lo - 1} if lo > 0 else set()))
        for v in vals:
            add('m_enum_%s_%d' % (lname(name), v), 'frame', with_field(name, u8(v)).bytes(),
                'BAD_VALUE')
    add('m_enum_target_kind_deliver_0', 'frame', base('DELIVER').set('TARGET_KIND', u8(0)).bytes(),
        'BAD_VALUE')
    add('m_enum_target_kind_deliver_4', 'frame', base('DELIVER').set('TARGET_KIND', u8(4)).bytes(),
        'BAD_VALUE')
    add('m_enum_class_deliver_2', 'frame', base('DELIVER').set('CLASS', u8(2)).bytes(),
        'BAD_VALUE')
    add('m_enum_status_presence_4', 'frame', base('PRESENCE').set('STATUS', u8(4)).bytes(),
        'BAD_VALUE')

    o.section('Value constraints (IMP-FIELD-010, IMP-MSG-002, IMP-MSG-003, IMP-MSG-008, '
              'IMP-MSG-009).')
    vc = [
        ('version_min_0', base('HELLO').set('VERSION_MIN', 0)),
        ('version_min_0_max_0', base('HELLO').set('VERSION_MIN', 0).set('VERSION_MAX', 0)),
        ('version_max_lt_min', base('HELLO').set('VERSION_MIN', 2).set('VERSION_MAX', 1)),
        ('version_max_0', base('HELLO').set('VERSION_MAX', 0)),
        ('version_max_lt_min_big', base('HELLO').set('VERSION_MIN', 65535)
         .set('VERSION_MAX', 65534)),
        ('max_frame_4095', base('WELCOME').set('MAX_FRAME', 4095).set('MAX_FRAME_PREAUTH', 1024)),
        ('max_frame_0', base('WELCOME').set('MAX_FRAME', 0).set('MAX_FRAME_PREAUTH', 0)),
        ('max_frame_hard_plus1', base('WELCOME').set('MAX_FRAME', HARD + 1)),
        ('max_frame_ffffffff', base('WELCOME').set('MAX_FRAME', 0xffffffff)),
        ('preauth_gt_max_frame', base('WELCOME').set('MAX_FRAME', 8192)
         .set('MAX_FRAME_PREAUTH', 8193)),
        ('preauth_gt_max_frame_min', base('WELCOME').set('MAX_FRAME', 4096)
         .set('MAX_FRAME_PREAUTH', 4097)),
        ('preauth_1023', base('WELCOME').set('MAX_FRAME_PREAUTH', 1023)),
        ('preauth_0', base('WELCOME').set('MAX_FRAME_PREAUTH', 0)),
        ('preauth_hard_plus1', base('WELCOME').set('MAX_FRAME', HARD)
         .set('MAX_FRAME_PREAUTH', HARD + 1)),
        ('error_code_0', base('ERROR').set('CODE', 0)),
        ('ack_code_0', base('ACK').drop('MSG_ID').set('OUTCOME', 3).set('CODE', 0)),
        ('presence_status_0', base('PRESENCE').set('STATUS', 0)),
        ('presence_status_0_text', base('PRESENCE').set('STATUS', 0).set('STATUS_TEXT', b'x')),
    ]
    for n, m in vc:
        add('m_value_' + n, 'frame', m.bytes(), 'BAD_VALUE')

    o.section('Bad UTF-8 in text fields (IMP-TEXT-001) -> BAD_UTF8; in header values -> BAD_LIST\n'
              '(IMP-FIELD-009).')
    for fld, host in (('AGENT', 'HELLO'), ('TEXT', 'ERROR'), ('STATUS_TEXT', 'PRESENCE'),
                      ('CLIENT_MSG_ID', 'SEND'), ('EVENT', 'MONITOR_EVENT')):
        for bn, bv in BAD_UTF8:
            add('m_utf8_%s_%s' % (lname(fld), bn), 'frame', base(host).set(fld, bv).bytes(),
                'BAD_UTF8')
    for bn, bv in BAD_UTF8:
        add('m_utf8_header_value_%s' % bn, 'frame',
            base('SEND').set('HEADERS', headers_list((b'k', b'ok'), (b'x', bv))).bytes(),
            'BAD_LIST')
    for fld, host in (('TEXT', 'ACK'), ('TEXT', 'MONITOR_EVENT'), ('AGENT', 'WELCOME'),
                      ('STATUS_TEXT', 'PRESENCE_EVENT'), ('CLIENT_MSG_ID', 'ACK')):
        add('m_utf8_%s_%s_surrogate' % (lname(fld), lname(host)), 'frame',
            base(host).set(fld, b'ok\xed\xb0\x80').bytes(), 'BAD_UTF8')

    o.section('Bad names (IMP-TEXT-002): BAD_NAME in name fields, BAD_LIST in names lists.')
    for fld, host in (('USER', 'REGISTER'), ('TARGET', 'SEND'), ('ROOM', 'JOIN'),
                      ('SENDER', 'DELIVER')):
        for bn, bv in BAD_NAMES:
            add('m_name_%s_%s' % (lname(fld), bn), 'frame', base(host).set(fld, bv).bytes(),
                'BAD_NAME')
    for fld, host in (('USER', 'LOGIN'), ('USER', 'AUTH_OK'), ('USER', 'PRESENCE_EVENT'),
                      ('USER', 'MONITOR_EVENT'), ('ROOM', 'HISTORY_ITEM'), ('TARGET', 'DELIVER'),
                      ('ROOM', 'LEAVE'), ('ROOM', 'MEMBERS'), ('ROOM', 'HISTORY'),
                      ('ROOM', 'MEMBER_LIST'), ('SENDER', 'HISTORY_ITEM')):
        add('m_name_%s_%s_dash' % (lname(fld), lname(host)), 'frame',
            base(host).set(fld, b'-x').bytes(), 'BAD_NAME')
    for fld, host in (('NAMES', 'SUBSCRIBE'), ('CAPS', 'HELLO')):
        for bn, bv in BAD_NAMES + [('empty', b''), ('long33', b'n' * 33)]:
            add('m_list_%s_%s' % (lname(fld), bn), 'frame',
                base(host).set(fld, names_list(b'ok', bv)).bytes(), 'BAD_LIST')
    for ty in ('MEMBER_LIST', 'ROOM_LIST', 'WHO_LIST'):
        add('m_list_names_%s_bad' % lname(ty), 'frame',
            base(ty).set('NAMES', names_list(b'a', b'b c')).bytes(), 'BAD_LIST')
    add('m_list_caps_welcome_bad', 'frame',
        base('WELCOME').set('CAPS', names_list(b'_x')).bytes(), 'BAD_LIST')

    o.section('Malformed lists (IMP-FIELD-009) -> BAD_LIST.')
    lists = [
        ('names_past_end', 'SUBSCRIBE', 'NAMES', b'\x05abc'),
        ('names_len_only', 'SUBSCRIBE', 'NAMES', names_list(b'bob') + b'\x03'),
        ('names_zero_first', 'SUBSCRIBE', 'NAMES', b'\x00'),
        ('names_zero_after', 'SUBSCRIBE', 'NAMES', names_list(b'bob') + b'\x00'),
        ('names_1001', 'SUBSCRIBE', 'NAMES', names_list(*([b'a'] * 1001))),
        ('names_1001_who_list', 'WHO_LIST', 'NAMES', names_list(*([b'w'] * 1001))),
        ('caps_past_end', 'HELLO', 'CAPS', b'\x20history'),
        ('caps_zero', 'HELLO', 'CAPS', b'\x00'),
        ('headers_key_empty', 'SEND', 'HEADERS', headers_list((b'', b'v'))),
        ('headers_key_65', 'SEND', 'HEADERS', headers_list((b'k' * 65, b'v'))),
        ('headers_key_space', 'SEND', 'HEADERS', headers_list((b'a b', b'v'))),
        ('headers_key_colon', 'SEND', 'HEADERS', headers_list((b'a:b', b'v'))),
        ('headers_key_slash', 'SEND', 'HEADERS', headers_list((b'a/b', b'v'))),
        ('headers_key_at', 'SEND', 'HEADERS', headers_list((b'a@b', b'v'))),
        ('headers_key_non_ascii', 'SEND', 'HEADERS', headers_list(('\u00e9'.encode(), b'v'))),
        ('headers_key_nul', 'SEND', 'HEADERS', headers_list((b'a\x00', b'v'))),
        ('headers_value_1025', 'SEND', 'HEADERS', headers_list((b'k', b'v' * 1025))),
        ('headers_dup_case', 'SEND', 'HEADERS', headers_list((b'X-Id', b'1'), (b'x-id', b'2'))),
        ('headers_dup_exact', 'SEND', 'HEADERS', headers_list((b'a', b'1'), (b'a', b'1'))),
        ('headers_dup_nonadjacent', 'SEND', 'HEADERS',
         headers_list((b'ab', b''), (b'c', b''), (b'AB', b''))),
        ('headers_33', 'SEND', 'HEADERS', headers_list(*[(b'h%02d' % i, b'') for i in range(33)])),
        ('headers_trunc_key', 'SEND', 'HEADERS', b'\x05ab'),
        ('headers_trunc_vlen', 'SEND', 'HEADERS', b'\x01k\x00'),
        ('headers_trunc_vlen_missing', 'SEND', 'HEADERS', b'\x01k'),
        ('headers_trunc_value', 'SEND', 'HEADERS', b'\x01k\x00\x05abc'),
        ('headers_trunc_after_entry', 'SEND', 'HEADERS', headers_list((b'k', b'v')) + b'\x02'),
        ('headers_deliver_dup', 'DELIVER', 'HEADERS', headers_list((b'K', b''), (b'k', b''))),
        ('headers_history_item_bad', 'HISTORY_ITEM', 'HEADERS', headers_list((b'', b''))),
        ('stats_upper', 'STATS_REPLY', 'STATS', stats_list((b'Conn', 1))),
        ('stats_dash', 'STATS_REPLY', 'STATS', stats_list((b'a-b', 1))),
        ('stats_space', 'STATS_REPLY', 'STATS', stats_list((b'a b', 1))),
        ('stats_at', 'STATS_REPLY', 'STATS', stats_list((b'a@b', 1))),
        ('stats_non_ascii', 'STATS_REPLY', 'STATS', stats_list((b'\xc3\xa9', 1))),
        ('stats_empty_name', 'STATS_REPLY', 'STATS', stats_list((b'', 1))),
        ('stats_name_65', 'STATS_REPLY', 'STATS', stats_list((b's' * 65, 1))),
        ('stats_trunc_u64', 'STATS_REPLY', 'STATS', stats_list((b'ok', 1)) + b'\x01a' + b'\x00' * 7),
        ('stats_trunc_name', 'STATS_REPLY', 'STATS', b'\x09abc'),
        ('stats_nlen_only', 'STATS_REPLY', 'STATS', stats_list((b'ok', 1)) + b'\x01'),
        ('stats_1001', 'STATS_REPLY', 'STATS', stats_list(*[(b's', i) for i in range(1001)])),
    ]
    for n, ty, fld, val in lists:
        add('m_list_' + n, 'frame', base(ty).set(fld, val).bytes(), 'BAD_LIST')

    o.section('Cross-field rules (IMP-MSG-004, IMP-MSG-006, IMP-MSG-007).')
    add('m_login_neither', 'frame', base('LOGIN').drop('PASSWORD').bytes(), 'MISSING_FIELD')
    add('m_login_neither_last_seq', 'frame', base('LOGIN').drop('PASSWORD').set('LAST_SEQ', 1)
        .bytes(), 'MISSING_FIELD')
    add('m_login_both', 'frame', base('LOGIN').set('TOKEN', b'T' * 16).bytes(), 'FIELD_CONFLICT')
    for ty in ('SEND', 'DELIVER'):
        add('m_%s_user_no_target' % lname(ty), 'frame', base(ty).drop('TARGET').bytes(),
            'MISSING_FIELD')
        add('m_%s_room_no_target' % lname(ty), 'frame',
            base(ty).set('TARGET_KIND', 2).drop('TARGET').bytes(), 'MISSING_FIELD')
        add('m_%s_broadcast_target' % lname(ty), 'frame', base(ty).set('TARGET_KIND', 3).bytes(),
            'FIELD_CONFLICT')
    add('m_ack_refused_no_code', 'frame', base('ACK').set('OUTCOME', 3).bytes(), 'MISSING_FIELD')
    add('m_ack_refused_no_code_no_id', 'frame', base('ACK').drop('MSG_ID').set('OUTCOME', 3)
        .bytes(), 'MISSING_FIELD')
    add('m_ack_stored_no_msg_id', 'frame', base('ACK').drop('MSG_ID').bytes(), 'MISSING_FIELD')
    add('m_ack_stored_code_no_msg_id', 'frame', base('ACK').drop('MSG_ID').set('CODE', 500)
        .bytes(), 'MISSING_FIELD')
    add('m_ack_delivered_no_msg_id', 'frame', base('ACK').drop('MSG_ID').set('OUTCOME', 2)
        .set('DUPLICATE', 1).bytes(), 'MISSING_FIELD')

    # -- connections --------------------------------------------------------------------
    o.section('Role (IMP-MSG-001): frames only the other role may send -> WRONG_ROLE, in every\n'
              'state but CLOSING. Valid payloads, so nothing but the role is wrong.')
    for st in ('AWAIT_HELLO', 'AWAIT_AUTH', 'AUTHENTICATING', 'READY'):
        for t in S2C_TYPES:
            add('m_role_srv_%s_%s' % (lname(st), lname(t)), 'server:' + st, base(t).bytes(),
                'WRONG_ROLE')
    for st in ('HELLO_SENT', 'CONNECTED', 'AUTH_SENT', 'READY', 'LOGOUT_SENT'):
        for t in C2S_TYPES:
            add('m_role_cli_%s_%s' % (lname(st), lname(t)), 'client:' + st, base(t).bytes(),
                'WRONG_ROLE')

    o.section('State (IMP-SESS-002, IMP-SESS-004, tables 7.1 and 7.3).')
    srv = dict(
        AWAIT_HELLO=[(t, 'STATE') for t in ['REGISTER', 'LOGIN', 'LOGOUT', 'PING', 'PONG'] +
                     APP_C],
        AWAIT_AUTH=[('HELLO', 'STATE')] + [(t, 'NOT_AUTHENTICATED') for t in APP_C],
        AUTHENTICATING=[(t, 'STATE') for t in ('HELLO', 'REGISTER', 'LOGIN')] +
        [(t, 'NOT_AUTHENTICATED') for t in APP_C],
        READY=[(t, 'STATE') for t in ('HELLO', 'REGISTER', 'LOGIN')],
    )
    for st, cells in srv.items():
        for t, err in cells:
            add('m_state_srv_%s_%s' % (lname(st), lname(t)), 'server:' + st, base(t, 2).bytes(),
                err)
    app_s_not_ok = [t for t in APP_S if t != 'OK']
    cli = dict(
        HELLO_SENT=[(t, 'STATE') for t in ['AUTH_OK', 'OK'] + app_s_not_ok],
        CONNECTED=[(t, 'STATE') for t in ['WELCOME', 'AUTH_OK', 'OK'] + app_s_not_ok],
        AUTH_SENT=[(t, 'STATE') for t in ['WELCOME', 'OK'] + app_s_not_ok],
        READY=[(t, 'STATE') for t in ('WELCOME', 'AUTH_OK')],
        LOGOUT_SENT=[('WELCOME', 'STATE')],
    )
    for st, cells in cli.items():
        for t, err in cells:
            add('m_state_cli_%s_%s' % (lname(st), lname(t)), 'client:' + st, base(t, 2).bytes(),
                err)

    o.section('Receive limits of a server (IMP-SESS-006, IMP-SEC-001): 4096 bytes before '
              'AUTH_OK,\n1 MiB after; a client: 16 MiB (its default).')
    m = base('HELLO').add_raw(0x1000, b'p' * (4097 - 12 - 16 - 6))
    assert len(m.bytes()) == 4097
    add('m_srv_hello_4097', 'server:AWAIT_HELLO', m.bytes(), 'FRAME_TOO_LARGE')
    add('m_srv_hello_4097_header', 'server:AWAIT_HELLO', header(0x01, 4097 - 12),
        'FRAME_TOO_LARGE', note='checked on the header, before any payload byte')
    add('m_srv_hello_4096_header_need', 'server:AWAIT_HELLO', header(0x01, 4096 - 12), 'need')
    m = base('LOGIN').add_raw(0x1000, b'p' * (4097 - 12 - 11 - 12 - 6))
    assert len(m.bytes()) == 4097
    add('m_srv_login_4097', 'server:AWAIT_AUTH', m.bytes(), 'FRAME_TOO_LARGE',
        note='LOGIN itself is bound by the pre-auth limit')
    add('m_srv_register_4097_header', 'server:AWAIT_AUTH', header(0x03, 4097 - 12),
        'FRAME_TOO_LARGE')
    add('m_srv_ping_4097_authenticating', 'server:AUTHENTICATING', header(0x50, 4097 - 12),
        'FRAME_TOO_LARGE')
    add('m_srv_ready_1mib_plus1', 'server:READY', header(0x10, MIB + 1 - 12), 'FRAME_TOO_LARGE')
    add('m_srv_ready_1mib_need', 'server:READY', header(0x10, MIB - 12), 'need')
    add('m_srv_ready_ffffffff', 'server:READY', header(0x10, 0xffffffff), 'FRAME_TOO_LARGE')
    add('m_cli_ready_hard_plus1', 'client:READY', header(0x12, HARD + 1 - 12), 'FRAME_TOO_LARGE')
    add('m_cli_ready_hard_need', 'client:READY', header(0x12, HARD - 12), 'need')
    add('m_cli_hello_sent_hard_plus1', 'client:HELLO_SENT', header(0x02, HARD + 1 - 12),
        'FRAME_TOO_LARGE')

    o.section('Header and payload errors through connections (IMP-ERR-003: sticky, fatal).')
    add('m_srv_bad_version', 'server:AWAIT_HELLO', header(0x01, 0, version=0), 'BAD_VERSION')
    add('m_srv_unknown_type', 'server:READY', header(0x14, 0), 'UNKNOWN_TYPE')
    add('m_srv_flags', 'server:AWAIT_AUTH', header(0x04, 0, flags=0x0001), 'RESERVED_FLAGS')
    add('m_cli_unknown_type', 'client:READY', header(0xff, 0), 'UNKNOWN_TYPE')
    add('m_srv_send_bad_utf8', 'server:READY',
        base('SEND').set('CLIENT_MSG_ID', b'\xc0\x80').bytes(), 'BAD_UTF8')
    add('m_srv_send_missing_body', 'server:READY', base('SEND').drop('BODY').bytes(),
        'MISSING_FIELD')
    add('m_srv_hello_version_order', 'server:AWAIT_HELLO',
        base('HELLO').set('VERSION_MIN', 3).set('VERSION_MAX', 2).bytes(), 'BAD_VALUE')
    add('m_srv_login_both', 'server:AWAIT_AUTH',
        base('LOGIN').set('TOKEN', b't' * 20).bytes(), 'FIELD_CONFLICT')
    add('m_cli_welcome_preauth', 'client:HELLO_SENT',
        base('WELCOME').set('MAX_FRAME_PREAUTH', MIB + 1).bytes(), 'BAD_VALUE')
    add('m_cli_deliver_bad_sender', 'client:READY',
        base('DELIVER').set('SENDER', b'a b').bytes(), 'BAD_NAME')
    add('m_srv_trunc', 'server:READY', frame('PING', b'\x00\x01\x00'), 'TRUNCATED')
    o.write()
    return o.count


if __name__ == '__main__':
    gen_valid()
    n = gen_malformed()
    assert n >= 300, n
