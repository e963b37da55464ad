/*
 * The element scanner in C: scanner.scan_level, compiled, with the fold of kept sequences
 * (scanner.kept_sequence_end) it calls.
 *
 * airflow_pseudo/pseudonymisation/scanner.py is the specification. This module implements the
 * same function with the same events, returned position and count, plan side effects (of the
 * nested plan too), and exceptions (type and message, and which one wins when several apply: the
 * checks run in the reference's order). tests/pseudonymisation/test_scanner.py runs both over
 * the same inputs.
 *
 * Differences, all outside what a caller of the fast path can meet:
 *
 * - Nesting: the reference walks undefined-length sequences and items recursively, one Python
 *   frame per level, so it raises RecursionError near Python's recursion limit (1000 frames by
 *   default, the caller's included). This walk refuses more than MAX_UNDEFINED_DEPTH levels with
 *   FastPathUnsupported (the fast path then falls back to the reference engine, as it does for
 *   RecursionError); between those depths the reference returns a result and this raises.
 * - Arguments outside the compiled domain are handed to the reference function itself, so the
 *   outcome is the reference's by construction: a position or end that is not an exact int or
 *   does not fit in 64 bits, a negative position, `implicit` other than bool, int or None,
 *   a `plan` that is not exactly a dict, a `nested` other than None or a tuple of exactly a
 *   dict, anything and an int that fits in 64 bits, a `buffer` without a simple buffer or whose
 *   len() is not its size in bytes (a memoryview of wider items, say).
 * - A plan code that is not an int (nor bool): `code < 0` (for a code found in the plan) and
 *   `code & 3` are computed as the reference does, raising its TypeError for None, a str...;
 *   when they succeed (an IntFlag, say) the whole call is redone by the reference. Tags
 *   classified so far are in the plan by then, so `classify` is still called once per missing
 *   tag, in the same order (unless it also returned negative codes, which the reference
 *   classifies again when it meets them).
 * - The buffer is exported (PyBUF_SIMPLE) while a scan runs: a `classify` that resizes the
 *   bytearray being scanned gets BufferError, where the reference would go on.
 *
 * The reference is imported when this module is: scanner.py must not import this module at
 * its top level (fastpath.py is the one to choose between the two).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* Plan codes and structure constants: the same values as scanner.py. */
#define KEEP 0
#define REMOVE 1
#define DICTIONARY_SQ 4
#define REPORT 8
#define FOLD 16
#define ITEM 0xFFFEE000u
#define ITEM_DELIMITER 0xFFFEE00Du
#define SEQUENCE_DELIMITER 0xFFFEE0DDu
#define UNDEFINED_LENGTH 0xFFFFFFFFu

/* Undefined-length sequences and items nested deeper than this are refused. */
#define MAX_UNDEFINED_DEPTH 200

/* VR codes are two capital letters: a 26 x 26 table, filled from scanner._VR_BY_CODE. */
#define VR_TABLE_SIZE (26 * 26)
#define NO_VR (-1)
#define VR_KNOWN 1
#define VR_LONG_LENGTH 2
#define VR_SQ 4
#define VR_UN 8

static const char HEADER_TRUNCATED[] = "truncated DICOM: the file ends inside an element header";
static const char VALUE_TRUNCATED[] = "truncated DICOM: a value runs past the end of the file";
static const char BAD_VR[] = "unexpected VR bytes (implicit data in an explicit file?)";
static const char MALFORMED_SEQUENCE[] = "malformed sequence";
static const char OUT_OF_ORDER[] = "elements out of order or misplaced delimiter";
static const char UNDEFINED_OUTSIDE[] = "undefined length outside a sequence";
static const char TOO_DEEP[] = "sequences of undefined length nested too deeply";

typedef struct {
    PyObject *unsupported; /* scanner.FastPathUnsupported */
    PyObject *truncated;   /* scanner.TruncatedFileError */
    PyObject *reference;   /* scanner.scan_level */
    PyObject *zero;        /* 0, for `code < 0` on codes that are not ints */
    PyObject *three;       /* 3, for `code & 3` on codes that are not ints */
    PyObject *low_bits;    /* 31, for the low bits of ints beyond 64 bits */
    PyObject *vr_names[VR_TABLE_SIZE]; /* the reference's own str objects */
    unsigned char vr_flags[VR_TABLE_SIZE];
} State;

typedef struct {
    const unsigned char *data;
    int64_t size;
    const State *state;
} Scan;

typedef struct {
    uint32_t tag;
    int vr; /* index into the VR table, or NO_VR */
    uint32_t length;
    int64_t value; /* position of the value */
} Header;

static inline uint32_t
uint16_at(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8;
}

static inline uint32_t
uint32_at(const unsigned char *p)
{
    return uint16_at(p) | uint16_at(p + 2) << 16;
}

static inline int
is_un(const Scan *scan, int vr)
{
    return vr != NO_VR && (scan->state->vr_flags[vr] & VR_UN);
}

static int
fail(PyObject *type, const char *message)
{
    PyErr_SetString(type, message);
    return -1;
}

/* read_header(): tag, VR, value length and value position; 0, or -1 with an exception set. */
static int
read_header(const Scan *scan, int64_t position, int implicit, Header *header)
{
    /* position >= 0 and size >= 0: neither side overflows. */
    if (position > scan->size - 8) {
        return fail(scan->state->truncated, HEADER_TRUNCATED);
    }
    const unsigned char *p = scan->data + position;
    uint32_t group = uint16_at(p);
    header->tag = group << 16 | uint16_at(p + 2);
    if (group == 0xFFFE || implicit) {
        header->vr = NO_VR;
        header->length = uint32_at(p + 4);
        header->value = position + 8;
        return 0;
    }
    unsigned int first = (unsigned int)p[4] - 'A', second = (unsigned int)p[5] - 'A';
    if (first >= 26 || second >= 26) {
        return fail(scan->state->unsupported, BAD_VR);
    }
    int vr = (int)(first * 26 + second);
    unsigned char flags = scan->state->vr_flags[vr];
    if (!(flags & VR_KNOWN)) {
        return fail(scan->state->unsupported, BAD_VR);
    }
    header->vr = vr;
    if (flags & VR_LONG_LENGTH) {
        if (position > scan->size - 12) {
            return fail(scan->state->truncated, HEADER_TRUNCATED);
        }
        header->length = uint32_at(p + 8);
        header->value = position + 12;
    }
    else {
        header->length = uint16_at(p + 6);
        header->value = position + 8;
    }
    return 0;
}

/* end_of_value(): where a value ends, after its length or after its sequence delimiter.
 * `start` never exceeds the buffer's size here, so start + length cannot overflow 64 bits.
 * `depth` counts the undefined-length values being walked around this one. */
static int
end_of_value(const Scan *scan, int64_t start, uint32_t length, int implicit_content, int depth,
             int64_t *end)
{
    if (length != UNDEFINED_LENGTH) {
        int64_t value_end = start + (int64_t)length;
        if (value_end > scan->size) {
            return fail(scan->state->truncated, VALUE_TRUNCATED);
        }
        *end = value_end;
        return 0;
    }
    if (depth >= MAX_UNDEFINED_DEPTH) {
        return fail(scan->state->unsupported, TOO_DEEP);
    }
    int64_t position = start;
    Header header;
    for (;;) {
        if (read_header(scan, position, 1, &header) < 0) {
            return -1;
        }
        if (header.tag == SEQUENCE_DELIMITER) {
            *end = header.value;
            return 0;
        }
        if (header.tag != ITEM) {
            return fail(scan->state->unsupported, MALFORMED_SEQUENCE);
        }
        if (header.length != UNDEFINED_LENGTH) {
            if (end_of_value(scan, header.value, header.length, implicit_content, depth + 1,
                             &position) < 0) {
                return -1;
            }
            continue;
        }
        position = header.value;
        for (;;) {
            if (read_header(scan, position, implicit_content, &header) < 0) {
                return -1;
            }
            if (header.tag == ITEM_DELIMITER) {
                position = header.value;
                break;
            }
            if (end_of_value(scan, header.value, header.length,
                             implicit_content || is_un(scan, header.vr), depth + 1,
                             &position) < 0) {
                return -1;
            }
        }
    }
}

/* `code < 0` for a code found in the plan: 1, 0, or -1 on error (the reference's TypeError for
 * a code that does not compare with ints, None say). */
static int
is_negative(const State *state, PyObject *code)
{
    if (PyLong_CheckExact(code)) {
        int overflow;
        long long value = PyLong_AsLongLongAndOverflow(code, &overflow);
        return overflow ? overflow < 0 : value < 0;
    }
    if (PyBool_Check(code)) {
        return 0;
    }
    return PyObject_RichCompareBool(code, state->zero, Py_LT);
}

/* The low five bits of a plan code (all the scanner reads): 1 with them in *bits; 0 when the
 * code is not an int and `code & 3` worked (the reference must redo the call); -1 on error. */
static int
code_bits(const State *state, PyObject *code, long *bits)
{
    if (PyLong_CheckExact(code) || PyBool_Check(code)) {
        int overflow;
        long long value = PyLong_AsLongLongAndOverflow(code, &overflow);
        if (value == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (!overflow) {
            *bits = (long)(value & 31); /* two's complement, as Python's & */
            return 1;
        }
        PyObject *masked = PyNumber_And(code, state->low_bits);
        if (masked == NULL) {
            return -1;
        }
        *bits = PyLong_AsLong(masked);
        Py_DECREF(masked);
        return *bits == -1 && PyErr_Occurred() ? -1 : 1;
    }
    PyObject *kind = PyNumber_And(code, state->three); /* the reference's TypeError, if any */
    if (kind == NULL) {
        return -1;
    }
    Py_DECREF(kind);
    return 0;
}

/* `breaks[index] < tag`, read and compared as the reference does: 1, 0, or -1 on error. */
static int
break_before(PyObject *breaks, Py_ssize_t index, uint32_t tag, PyObject *tag_object)
{
    PyObject *item;
    if (PyTuple_CheckExact(breaks)) {
        item = PyTuple_GET_ITEM(breaks, index); /* a tuple keeps the length read at the start */
        Py_INCREF(item);
    }
    else if (PyList_CheckExact(breaks)) {
        if (index >= PyList_GET_SIZE(breaks)) {
            PyErr_SetString(PyExc_IndexError, "list index out of range");
            return -1;
        }
        item = PyList_GET_ITEM(breaks, index);
        Py_INCREF(item);
    }
    else {
        PyObject *key = PyLong_FromSsize_t(index);
        if (key == NULL) {
            return -1;
        }
        item = PyObject_GetItem(breaks, key);
        Py_DECREF(key);
        if (item == NULL) {
            return -1;
        }
    }
    int result;
    if (PyLong_CheckExact(item)) {
        int overflow;
        long long value = PyLong_AsLongLongAndOverflow(item, &overflow);
        result = overflow ? overflow < 0 : value < (long long)tag;
    }
    else {
        result = PyObject_RichCompareBool(item, tag_object, Py_LT);
    }
    Py_DECREF(item);
    return result;
}

static int
append_steal(PyObject *events, PyObject *event)
{
    if (event == NULL) {
        return -1;
    }
    int result = PyList_Append(events, event);
    Py_DECREF(event);
    return result;
}

static PyObject *
make_tuple(Py_ssize_t size, PyObject **items)
{
    /* Steals the items; on failure, releases those it was given. */
    PyObject *tuple = PyTuple_New(size);
    for (Py_ssize_t i = 0; i < size; i++) {
        if (items[i] == NULL || tuple == NULL) {
            for (Py_ssize_t j = i; j < size; j++) {
                Py_XDECREF(items[j]);
            }
            Py_XDECREF(tuple);
            return NULL;
        }
        PyTuple_SET_ITEM(tuple, i, items[i]);
    }
    return tuple;
}

/* Append (COPY, start, end, first_tag) when a run is open, and close it. */
static int
flush_run(PyObject *events, int64_t *run_start, int64_t run_end, uint32_t run_tag)
{
    if (*run_start < 0) {
        return 0;
    }
    PyObject *items[4] = {
        PyLong_FromLong(0),
        PyLong_FromLongLong(*run_start),
        PyLong_FromLongLong(run_end),
        PyLong_FromUnsignedLong(run_tag),
    };
    *run_start = -1;
    return append_steal(events, make_tuple(4, items));
}

static int
append_element(PyObject *events, PyObject *tag_object, PyObject *vr, uint32_t length,
               int64_t position, int64_t value, int64_t element_end)
{
    Py_INCREF(tag_object);
    Py_INCREF(vr);
    PyObject *items[7] = {
        PyLong_FromLong(1),
        tag_object,
        vr,
        PyLong_FromUnsignedLong(length),
        PyLong_FromLongLong(position),
        PyLong_FromLongLong(value),
        PyLong_FromLongLong(element_end),
    };
    return append_steal(events, make_tuple(7, items));
}

/* The plan of sequence contents, for folding kept sequences into copy runs. */
typedef struct {
    PyObject *plan; /* NULL: no folding */
    PyObject *classify;
    long long depth; /* levels of items a folded sequence may span */
} Nested;

/* What one scan reads, besides positions. */
typedef struct {
    Scan scan;
    int implicit;
    PyObject *plan;
    PyObject *classify;
    PyObject *breaks;
    Py_ssize_t breaks_left; /* len(breaks), read once at the start as the reference does */
    Nested nested;
} Level;

/* plan.get(tag, -1), classified when negative: a new reference to the code, or NULL. */
static PyObject *
plan_code(const State *state, PyObject *plan, PyObject *classify, PyObject *tag_object)
{
    PyObject *code = PyDict_GetItemWithError(plan, tag_object);
    if (code != NULL) {
        Py_INCREF(code); /* `code < 0` may run code that changes the plan */
        int missing = is_negative(state, code);
        if (missing <= 0) {
            if (missing < 0) {
                Py_DECREF(code);
                return NULL;
            }
            return code;
        }
        Py_DECREF(code);
    }
    else if (PyErr_Occurred()) {
        return NULL;
    }
    code = PyObject_CallOneArg(classify, tag_object);
    if (code != NULL && PyDict_SetItem(plan, tag_object, code) < 0) {
        Py_CLEAR(code);
    }
    return code;
}

/* kept_sequence_end() and _kept_item_end() of the reference: what they return, as */
#define FOLD_KEPT 1   /* an int: *end is set */
#define FOLD_NOT 0    /* None */
#define FOLD_ERROR -1 /* an exception (set) */
#define FOLD_REDO -2  /* a plan code that is not an int: the reference redoes the call */

/* After read_header() or end_of_value() failed: the reference's "not kept", for its own
 * structure errors (which its caller meets again and raises). */
static int
not_kept(const State *state)
{
    if (PyErr_ExceptionMatches(state->unsupported) || PyErr_ExceptionMatches(state->truncated)) {
        PyErr_Clear();
        return FOLD_NOT;
    }
    return FOLD_ERROR;
}

static int kept_item_end(const Scan *scan, const Nested *nested, int64_t position, int64_t end,
                         int implicit, int64_t *kept);

static int
kept_sequence_end(const Scan *scan, const Nested *nested, int64_t start, uint32_t length,
                  int implicit, int64_t *kept)
{
    if (nested->depth < 1) {
        return FOLD_NOT;
    }
    const Nested inner = {nested->plan, nested->classify, nested->depth - 1};
    const int64_t end = length == UNDEFINED_LENGTH ? -1 : start + (int64_t)length;
    int64_t position = start;
    Header header;
    while (end < 0 || position < end) {
        if (read_header(scan, position, 1, &header) < 0) {
            return not_kept(scan->state);
        }
        if (header.tag == SEQUENCE_DELIMITER && end < 0) {
            *kept = header.value;
            return FOLD_KEPT;
        }
        if (header.tag != ITEM) {
            return FOLD_NOT;
        }
        int64_t item_end =
            header.length == UNDEFINED_LENGTH ? -1 : header.value + (int64_t)header.length;
        int result = kept_item_end(scan, &inner, header.value, item_end, implicit, &position);
        if (result != FOLD_KEPT) {
            return result;
        }
    }
    if (position != end) {
        return FOLD_NOT;
    }
    *kept = position;
    return FOLD_KEPT;
}

static int
kept_item_end(const Scan *scan, const Nested *nested, int64_t position, int64_t end,
              int implicit, int64_t *kept)
{
    const State *state = scan->state;
    long long previous = -1;
    Header header;
    while (end < 0 || position < end) {
        if (read_header(scan, position, implicit, &header) < 0) {
            return not_kept(state);
        }
        const uint32_t tag = header.tag;
        if (tag == ITEM_DELIMITER && end < 0) {
            *kept = header.value;
            return FOLD_KEPT;
        }
        if ((long long)tag <= previous || tag >> 16 == 0xFFFE || tag & 0x10000) {
            return FOLD_NOT;
        }
        previous = tag;
        PyObject *tag_object = PyLong_FromUnsignedLong(tag);
        if (tag_object == NULL) {
            return FOLD_ERROR;
        }
        PyObject *code_object = plan_code(state, nested->plan, nested->classify, tag_object);
        Py_DECREF(tag_object);
        if (code_object == NULL) {
            return FOLD_ERROR;
        }
        long code;
        int converted = code_bits(state, code_object, &code);
        Py_DECREF(code_object);
        if (converted <= 0) {
            return converted < 0 ? FOLD_ERROR : FOLD_REDO;
        }
        if (code & REPORT) {
            return FOLD_NOT;
        }
        const long kind = code & 3;
        const int un = is_un(scan, header.vr);
        const int hidden = header.vr == NO_VR || un;
        if ((header.vr != NO_VR && (state->vr_flags[header.vr] & VR_SQ)) ||
            (hidden && (code & DICTIONARY_SQ))) {
            if (un || !(code & FOLD) || kind & 1) {
                return FOLD_NOT;
            }
            int result =
                kept_sequence_end(scan, nested, header.value, header.length, implicit, &position);
            if (result != FOLD_KEPT) {
                return result;
            }
            continue;
        }
        if (kind != KEEP || (hidden && header.length == UNDEFINED_LENGTH)) {
            return FOLD_NOT;
        }
        if (end_of_value(scan, header.value, header.length, implicit, 0, &position) < 0) {
            return not_kept(state);
        }
    }
    if (position != end) {
        return FOLD_NOT;
    }
    *kept = position;
    return FOLD_KEPT;
}

/* The loop of scan_level. Returns (events, position, removed); or NULL with an exception set;
 * or NULL without one when a plan code is not an int: the reference must redo the call. */
static PyObject *
scan_elements(const Level *level, int64_t position, int64_t end)
{
    const Scan *scan = &level->scan;
    const State *state = scan->state;
    const int implicit = level->implicit;
    const int until_delimiter = end < 0;
    PyObject *events = PyList_New(0);
    PyObject *tag_object = NULL;
    long long removed = 0;
    long long previous = -1;
    int64_t run_start = -1, run_end = -1;
    uint32_t run_tag = 0;
    Py_ssize_t next_break = 0;
    Header header;
    if (events == NULL) {
        return NULL;
    }
    while (until_delimiter || position < end) {
        if (read_header(scan, position, implicit, &header) < 0) {
            goto error;
        }
        const uint32_t tag = header.tag;
        if (tag == ITEM_DELIMITER && until_delimiter) {
            position = header.value;
            break;
        }
        if ((long long)tag <= previous || tag >> 16 == 0xFFFE) {
            fail(state->unsupported, OUT_OF_ORDER);
            goto error;
        }
        previous = tag;
        const int un = is_un(scan, header.vr);
        const int hidden = header.vr == NO_VR || un;
        long code, kind;
        if (tag & 0x10000) { /* odd group: private, removed wherever it is */
            code = kind = REMOVE;
        }
        else {
            tag_object = PyLong_FromUnsignedLong(tag);
            if (tag_object == NULL) {
                goto error;
            }
            PyObject *code_object = plan_code(state, level->plan, level->classify, tag_object);
            if (code_object == NULL) {
                goto error;
            }
            int converted = code_bits(state, code_object, &code);
            Py_DECREF(code_object);
            if (converted <= 0) {
                goto error; /* with an exception, or without: the reference redoes the call */
            }
            kind = code & 3;
        }
        if (kind & 1 && !(code & REPORT)) { /* REMOVE or DROP */
            removed += kind == REMOVE;
            if (flush_run(events, &run_start, run_end, run_tag) < 0 ||
                end_of_value(scan, header.value, header.length, implicit || un, 0, &position) <
                    0) {
                goto error;
            }
            Py_CLEAR(tag_object);
            continue;
        }
        const int sequence = (header.vr != NO_VR && (state->vr_flags[header.vr] & VR_SQ)) ||
                             (hidden && (code & DICTIONARY_SQ));
        if (!sequence && hidden && header.length == UNDEFINED_LENGTH) {
            fail(state->unsupported, UNDEFINED_OUTSIDE);
            goto error;
        }
        int64_t folded = -1;
        if (sequence && level->nested.plan != NULL && (code & FOLD) && !(code & REPORT) && !un) {
            int result = kept_sequence_end(scan, &level->nested, header.value, header.length,
                                           implicit, &folded);
            if (result == FOLD_ERROR || result == FOLD_REDO) {
                goto error; /* with an exception, or without: the reference redoes the call */
            }
            if (result != FOLD_KEPT) {
                folded = -1;
            }
        }
        if (folded >= 0 || (kind == KEEP && !sequence && !(code & REPORT))) {
            while (next_break < level->breaks_left) {
                int before = break_before(level->breaks, next_break, tag, tag_object);
                if (before < 0) {
                    goto error;
                }
                if (!before) {
                    break;
                }
                next_break++;
                if (flush_run(events, &run_start, run_end, run_tag) < 0) {
                    goto error;
                }
            }
            if (run_start < 0) {
                run_start = position;
                run_tag = tag;
            }
            if (folded >= 0) {
                position = folded;
            }
            else if (end_of_value(scan, header.value, header.length, implicit, 0, &position) <
                     0) {
                goto error;
            }
            run_end = position;
            Py_CLEAR(tag_object);
            continue;
        }
        if (flush_run(events, &run_start, run_end, run_tag) < 0) {
            goto error;
        }
        int64_t element_end;
        if (end_of_value(scan, header.value, header.length,
                         sequence && !un ? implicit : implicit || un, 0, &element_end) < 0) {
            goto error;
        }
        PyObject *vr = header.vr == NO_VR ? Py_None : state->vr_names[header.vr];
        if (append_element(events, tag_object, vr, header.length, position, header.value,
                           element_end) < 0) {
            goto error;
        }
        position = element_end;
        Py_CLEAR(tag_object);
    }
    if (flush_run(events, &run_start, run_end, run_tag) < 0) {
        goto error;
    }
    return Py_BuildValue("NLL", events, (long long)position, removed);

error:
    Py_XDECREF(tag_object);
    Py_DECREF(events);
    return NULL;
}

/* Whether len(buffer) is the size in bytes of its simple buffer, as the reference assumes. */
static int
length_is_size(PyObject *buffer, const Py_buffer *view)
{
    if (PyBytes_CheckExact(buffer) || PyByteArray_CheckExact(buffer)) {
        return 1;
    }
    Py_ssize_t length = PyObject_Length(buffer);
    if (length < 0) {
        PyErr_Clear(); /* the reference raises it, if it gets that far */
        return 0;
    }
    return length == view->len;
}

static PyObject *
scan_level(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {
        "buffer", "position", "end", "implicit", "plan", "classify", "breaks", "nested", NULL,
    };
    PyObject *buffer, *position_object, *end_object, *implicit_object, *plan, *classify;
    PyObject *breaks = NULL, *nested = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOOOO|OO:scan_level", keywords, &buffer,
                                     &position_object, &end_object, &implicit_object, &plan,
                                     &classify, &breaks, &nested)) {
        return NULL;
    }
    const State *state = PyModule_GetState(module);
    if (state == NULL) {
        return NULL;
    }
    /* Arguments outside the compiled domain: the reference runs the call. */
    if (!PyLong_CheckExact(position_object) || !PyLong_CheckExact(end_object) ||
        !PyDict_CheckExact(plan) ||
        !(PyBool_Check(implicit_object) || PyLong_CheckExact(implicit_object) ||
          implicit_object == Py_None)) {
        return PyObject_Call(state->reference, args, kwargs);
    }
    Nested folding = {NULL, NULL, 0};
    if (nested != Py_None) {
        if (!PyTuple_CheckExact(nested) || PyTuple_GET_SIZE(nested) != 3 ||
            !PyDict_CheckExact(PyTuple_GET_ITEM(nested, 0)) ||
            !PyLong_CheckExact(PyTuple_GET_ITEM(nested, 2))) {
            return PyObject_Call(state->reference, args, kwargs);
        }
        int overflow_depth;
        folding.plan = PyTuple_GET_ITEM(nested, 0);
        folding.classify = PyTuple_GET_ITEM(nested, 1);
        folding.depth = PyLong_AsLongLongAndOverflow(PyTuple_GET_ITEM(nested, 2), &overflow_depth);
        if (overflow_depth) {
            return PyObject_Call(state->reference, args, kwargs);
        }
    }
    int overflow_position, overflow_end;
    long long position = PyLong_AsLongLongAndOverflow(position_object, &overflow_position);
    long long end = PyLong_AsLongLongAndOverflow(end_object, &overflow_end);
    if (overflow_position || overflow_end || position < 0) {
        return PyObject_Call(state->reference, args, kwargs);
    }
    int implicit = PyObject_IsTrue(implicit_object);
    if (implicit < 0) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(buffer, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        return PyObject_Call(state->reference, args, kwargs);
    }
    if (!length_is_size(buffer, &view)) {
        PyBuffer_Release(&view);
        return PyObject_Call(state->reference, args, kwargs);
    }
    Py_ssize_t breaks_left = breaks == NULL ? 0 : PyObject_Length(breaks);
    if (breaks_left < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    Level level = {
        .scan = {(const unsigned char *)view.buf, (int64_t)view.len, state},
        .implicit = implicit,
        .plan = plan,
        .classify = classify,
        .breaks = breaks,
        .breaks_left = breaks_left,
        .nested = folding,
    };
    PyObject *result = scan_elements(&level, (int64_t)position, (int64_t)end);
    PyBuffer_Release(&view);
    if (result == NULL && !PyErr_Occurred()) {
        return PyObject_Call(state->reference, args, kwargs);
    }
    return result;
}

static PyMethodDef methods[] = {
    {"scan_level", (PyCFunction)(void (*)(void))scan_level, METH_VARARGS | METH_KEYWORDS,
     "scan_level(buffer, position, end, implicit, plan, classify, breaks=(), nested=None)\n--\n\n"
     "Compiled airflow_pseudo.pseudonymisation.scanner.scan_level: same events, position,\n"
     "removed count, plan updates and exceptions."},
    {NULL, NULL, 0, NULL},
};

static int
exec_module(PyObject *module)
{
    State *state = PyModule_GetState(module);
    PyObject *scanner = PyImport_ImportModule("airflow_pseudo.pseudonymisation.scanner");
    if (scanner == NULL) {
        return -1;
    }
    PyObject *vr_by_code = NULL, *long_length = NULL, *code, *name;
    Py_ssize_t index = 0;
    int result = -1;
    state->unsupported = PyObject_GetAttrString(scanner, "FastPathUnsupported");
    state->truncated = PyObject_GetAttrString(scanner, "TruncatedFileError");
    state->reference = PyObject_GetAttrString(scanner, "scan_level");
    vr_by_code = PyObject_GetAttrString(scanner, "_VR_BY_CODE");
    long_length = PyObject_GetAttrString(scanner, "_LONG_LENGTH_VRS");
    state->zero = PyLong_FromLong(0);
    state->three = PyLong_FromLong(3);
    state->low_bits = PyLong_FromLong(31);
    if (state->unsupported == NULL || state->truncated == NULL || state->reference == NULL ||
        vr_by_code == NULL || long_length == NULL || state->zero == NULL || state->three == NULL ||
        state->low_bits == NULL) {
        goto done;
    }
    if (!PyExceptionClass_Check(state->unsupported) || !PyExceptionClass_Check(state->truncated) ||
        !PyFunction_Check(state->reference) || !PyDict_Check(vr_by_code) ||
        !PyAnySet_Check(long_length)) {
        PyErr_SetString(PyExc_ImportError,
                        "airflow_pseudo.pseudonymisation.scanner is not the reference this "
                        "module was written against");
        goto done;
    }
    while (PyDict_Next(vr_by_code, &index, &code, &name)) {
        if (!PyBytes_Check(code) || PyBytes_GET_SIZE(code) != 2 || !PyUnicode_Check(name)) {
            PyErr_SetString(PyExc_ImportError, "scanner._VR_BY_CODE: unexpected entry");
            goto done;
        }
        const unsigned char *bytes = (const unsigned char *)PyBytes_AS_STRING(code);
        unsigned int first = (unsigned int)bytes[0] - 'A', second = (unsigned int)bytes[1] - 'A';
        if (first >= 26 || second >= 26) {
            PyErr_SetString(PyExc_ImportError, "scanner._VR_BY_CODE: a VR code is not A-Z");
            goto done;
        }
        int vr = (int)(first * 26 + second);
        int is_long = PySet_Contains(long_length, name);
        if (is_long < 0) {
            goto done;
        }
        unsigned char flags = VR_KNOWN | (is_long ? VR_LONG_LENGTH : 0);
        if (PyUnicode_CompareWithASCIIString(name, "SQ") == 0) {
            flags |= VR_SQ;
        }
        if (PyUnicode_CompareWithASCIIString(name, "UN") == 0) {
            flags |= VR_UN;
        }
        Py_INCREF(name);
        Py_XSETREF(state->vr_names[vr], name);
        state->vr_flags[vr] = flags;
    }
    result = 0;
done:
    Py_XDECREF(vr_by_code);
    Py_XDECREF(long_length);
    Py_DECREF(scanner);
    return result;
}

static int
traverse_module(PyObject *module, visitproc visit, void *arg)
{
    State *state = PyModule_GetState(module);
    if (state == NULL) {
        return 0;
    }
    Py_VISIT(state->unsupported);
    Py_VISIT(state->truncated);
    Py_VISIT(state->reference);
    Py_VISIT(state->zero);
    Py_VISIT(state->three);
    Py_VISIT(state->low_bits);
    for (int i = 0; i < VR_TABLE_SIZE; i++) {
        Py_VISIT(state->vr_names[i]);
    }
    return 0;
}

static int
clear_module(PyObject *module)
{
    State *state = PyModule_GetState(module);
    if (state == NULL) {
        return 0;
    }
    Py_CLEAR(state->unsupported);
    Py_CLEAR(state->truncated);
    Py_CLEAR(state->reference);
    Py_CLEAR(state->zero);
    Py_CLEAR(state->three);
    Py_CLEAR(state->low_bits);
    for (int i = 0; i < VR_TABLE_SIZE; i++) {
        Py_CLEAR(state->vr_names[i]);
    }
    return 0;
}

static void
free_module(void *module)
{
    clear_module((PyObject *)module);
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
    {0, NULL},
};

static struct PyModuleDef definition = {
    PyModuleDef_HEAD_INIT,
    .m_name = "airflow_pseudo.pseudonymisation._scanner",
    .m_doc = "The element scanner in C; airflow_pseudo.pseudonymisation.scanner is its reference.",
    .m_size = sizeof(State),
    .m_methods = methods,
    .m_slots = slots,
    .m_traverse = traverse_module,
    .m_clear = clear_module,
    .m_free = free_module,
};

PyMODINIT_FUNC
PyInit__scanner(void)
{
    return PyModuleDef_Init(&definition);
}
