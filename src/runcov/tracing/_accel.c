/* runcov.tracing._accel: the tracing cores' hot paths in C.
 *
 * The sys.monitoring core (sysmon.py) records, for each LINE, PY_RETURN and PY_UNWIND event of
 * armed code that runs inside an exact scope, one arc (co_filename, previous line, line) into
 * the scope's ``triples`` set, keeping the previous line per frame in the scope's ``last`` dict.
 * The Python callbacks that do this cost ~0.4 us per event; these (``Recorder``) do the same
 * work in ~0.15 us. They handle only two cases themselves:
 *
 *   - the current scope is an open exact ScopeState: record the arc (the hot path of a
 *     sampled request);
 *   - there is no current scope (or only a closed one: a scope that expired, or was closed
 *     in another context) and ``divert`` is 0 (no census): return None (unsampled work
 *     running while another request keeps the code armed). While the core lingers armed, such
 *     an event also spends one unit of ``budget``; the one that spends the last unit calls
 *     ``on_spent`` (the core disarms), so lingering costs no more per event than this return.
 *
 * Everything else (census, lingering, any other scope type) goes to the Python callback given
 * as ``fallback``, which stays the reference implementation: both must record the same arcs.
 * The PY_START and PY_RESUME callback of watched code (``watch``) answers the calls of
 * registered code: outside any scope while exact scopes are armed (returns), in an exact scope
 * while armed (promotes the code to the exact-mode events), and outside any scope while
 * disarmed (takes off the watch a disarm left on), each under the core's lock as the Python
 * callback does it. First calls (registration), census and any other scope type, and a lock
 * another thread holds, are the Python callback's.
 * Any error is swallowed: a callback never raises into the host application.
 *
 * The scope's slots are read at the offsets of ScopeState's member descriptors, found once when
 * the recorder is created; the scope's type is checked exactly before they are read.
 */
/* The settrace core (settrace.py, CPython 3.11) gets a C-level trace function, ``Dispatcher``,
 * installed with PyEval_SetTrace instead of sys.settrace. Call events while an open exact or
 * census scope is current are decided here: no local tracer outside the roots or for saturated
 * census code, else a C one (``FunctionArcs`` for functions, generators and coroutines of exact
 * scopes, ``CensusLines`` for census) whose events are recorded without calling into Python.
 * The rest goes to the core's Python call handler and Python local tracers, called as
 * sys.settrace's trampoline would but without its copies of every frame's fast locals into a
 * dict and back around each event (PyFrame_FastToLocals, before 3.13). The Python handlers
 * stay the reference implementation: both must record the same arcs.
 */
/* The OpenTelemetry span processor (otel/processor.py) gets its per-request path, ``SpanGate``:
 * the "not sampled" decision at a span's start and the "seen" count at its end, in C. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <frameobject.h>
#include <opcode.h>
#include <structmember.h>

/* Generator-like frames are recorded in C where frames expose their RESUME instructions
 * (3.11+): a call event at a RESUME with oparg 0 is the frame's start, any other a resumption;
 * a return event followed by a RESUME is a yield or await, not the frame's end. */
#if PY_VERSION_HEX >= 0x030B0000
#define RESUMES_IN_C 1
#else
#define RESUMES_IN_C 0
#endif

/* Interned names and constants (made by intern_names at import). */
static PyObject *name_acquire, *name_release, *zero;

typedef struct {
    PyObject_HEAD
    PyObject *var;            /* the ContextVar holding the current scope */
    PyTypeObject *scope_type; /* ScopeState */
    Py_ssize_t off_is_census, off_last, off_triples, off_closed;
    PyObject *line_fallback;  /* Python on_line(code, line) */
    PyObject *exit_fallback;  /* Python on_exit(code, offset, value) */
    PyObject *skip;           /* the SKIP sentinel stored for frames running before the scope */
    int divert;               /* nonzero: unscoped events go to the fallback */
    Py_ssize_t budget;        /* linger budget: unscoped events until on_spent is called */
    PyObject *on_spent;       /* Python callable: the linger budget ran out (or NULL) */
    PyObject *codes, *once;   /* the core's registered code objects (by id): unwind()'s filter */
    int armed;                /* nonzero while exact scopes are armed (see watch()) */
    PyObject *watch_fallback; /* Python on_py_start(code, offset) (or NULL) */
    /* What watch() promotes and unwatches with (set by attach_watch; NULL: Python does it). */
    PyObject *lock;           /* the core's lock (an RLock) */
    PyObject *promoted;       /* dict: id(code) -> code promoted since the last arm */
    PyObject *watching;       /* set of ids: registered code carrying the watch */
    PyObject *bare;           /* set of ids: registered code carrying nothing */
    PyObject *hot;            /* set of ids: watched code that unsampled work called */
    PyObject *set_local;      /* sys.monitoring.set_local_events */
    PyObject *tool;           /* the tool id */
    PyObject *exact_events;   /* LINE | PY_RETURN */
    double promote_cost;      /* seconds spent promoting, since the core last took it */
    double unwatch_cost;      /* seconds spent taking watches off, likewise */
} Recorder;

static Py_ssize_t
slot_offset(PyTypeObject *type, const char *name)
{
    PyObject *descr = type->tp_dict ? PyDict_GetItemString(type->tp_dict, name) : NULL;
    if (descr == NULL || !PyObject_TypeCheck(descr, &PyMemberDescr_Type)) {
        PyErr_Format(PyExc_TypeError, "%s has no slot %s", type->tp_name, name);
        return -1;
    }
    PyMemberDef *def = ((PyMemberDescrObject *)descr)->d_member;
    if (def->type != T_OBJECT_EX) {
        PyErr_Format(PyExc_TypeError, "%s.%s is not an object slot", type->tp_name, name);
        return -1;
    }
    return def->offset;
}

/* Store a new reference to ``value`` in ``*field`` (releasing what was there). */
static void
hold(PyObject **field, PyObject *value)
{
    Py_INCREF(value);
    Py_XSETREF(*field, value);
}

/* ``dict[key]``, a set, created empty when missing (borrowed; NULL with an error set). */
static PyObject *
set_in(PyObject *dict, PyObject *key)
{
    PyObject *found = PyDict_GetItemWithError(dict, key);
    if (found != NULL || PyErr_Occurred()) {
        return found;
    }
    found = PySet_New(NULL);
    if (found == NULL) {
        return NULL;
    }
    int stored = PyDict_SetItem(dict, key, found);
    Py_DECREF(found); /* the dict holds it */
    return stored < 0 ? NULL : found;
}

static int
Recorder_init(Recorder *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"var",  "scope_type", "line_fallback", "exit_fallback",
                             "skip", "codes",      "once",          NULL};
    PyObject *var, *scope_type, *line_fb, *exit_fb, *skip, *codes, *once;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!OOOO!O!", kwlist, &PyContextVar_Type, &var,
                                     &PyType_Type, &scope_type, &line_fb, &exit_fb, &skip,
                                     &PyDict_Type, &codes, &PyDict_Type, &once)) {
        return -1;
    }
    PyTypeObject *type = (PyTypeObject *)scope_type;
    Py_ssize_t census = slot_offset(type, "is_census");
    Py_ssize_t last = census < 0 ? -1 : slot_offset(type, "last");
    Py_ssize_t triples = last < 0 ? -1 : slot_offset(type, "triples");
    Py_ssize_t closed = triples < 0 ? -1 : slot_offset(type, "closed");
    if (closed < 0) {
        return -1;
    }
    self->off_is_census = census;
    self->off_last = last;
    self->off_triples = triples;
    self->off_closed = closed;
    hold(&self->var, var);
    hold((PyObject **)&self->scope_type, scope_type);
    hold(&self->line_fallback, line_fb);
    hold(&self->exit_fallback, exit_fb);
    hold(&self->skip, skip);
    hold(&self->codes, codes);
    hold(&self->once, once);
    return 0;
}

static int
Recorder_traverse(Recorder *self, visitproc visit, void *arg)
{
    Py_VISIT(self->var);
    Py_VISIT(self->scope_type);
    Py_VISIT(self->line_fallback);
    Py_VISIT(self->exit_fallback);
    Py_VISIT(self->skip);
    Py_VISIT(self->codes);
    Py_VISIT(self->once);
    Py_VISIT(self->on_spent);
    Py_VISIT(self->watch_fallback);
    Py_VISIT(self->lock);
    Py_VISIT(self->promoted);
    Py_VISIT(self->watching);
    Py_VISIT(self->bare);
    Py_VISIT(self->hot);
    Py_VISIT(self->set_local);
    Py_VISIT(self->tool);
    Py_VISIT(self->exact_events);
    return 0;
}

static int
Recorder_clear(Recorder *self)
{
    Py_CLEAR(self->var);
    Py_CLEAR(self->scope_type);
    Py_CLEAR(self->line_fallback);
    Py_CLEAR(self->exit_fallback);
    Py_CLEAR(self->skip);
    Py_CLEAR(self->codes);
    Py_CLEAR(self->once);
    Py_CLEAR(self->on_spent);
    Py_CLEAR(self->watch_fallback);
    Py_CLEAR(self->lock);
    Py_CLEAR(self->promoted);
    Py_CLEAR(self->watching);
    Py_CLEAR(self->bare);
    Py_CLEAR(self->hot);
    Py_CLEAR(self->set_local);
    Py_CLEAR(self->tool);
    Py_CLEAR(self->exact_events);
    return 0;
}

static void
Recorder_dealloc(Recorder *self)
{
    PyObject_GC_UnTrack(self);
    Recorder_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

/* Outcome of looking at the current scope. */
enum { SCOPE_NONE, SCOPE_EXACT, SCOPE_OTHER };

/* The current scope: SCOPE_EXACT sets *scope (new reference). A closed exact scope (one that
 * expired, or was closed in another context while still bound here) is SCOPE_NONE: its work
 * records nothing and promotes nothing, as unsampled work. */
static int
current_scope(Recorder *self, PyObject **scope)
{
    PyObject *value = NULL;
    if (self->var == NULL || PyContextVar_Get(self->var, Py_None, &value) < 0) {
        PyErr_Clear();
        return SCOPE_NONE;
    }
    if (value == Py_None) {
        Py_DECREF(value);
        return SCOPE_NONE;
    }
    if (Py_TYPE(value) != self->scope_type || SLOT(value, self->off_is_census) != Py_False) {
        Py_DECREF(value);
        return SCOPE_OTHER;
    }
    if (SLOT(value, self->off_closed) != Py_False) {
        Py_DECREF(value);
        return SCOPE_NONE;
    }
    *scope = value;
    return SCOPE_EXACT;
}

static PyObject *
call_fallback(PyObject *fallback, PyObject *const *args, Py_ssize_t nargs)
{
    if (fallback == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *result = PyObject_Vectorcall(fallback, args, nargs, NULL);
    if (result == NULL) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return result;
}

/* Add (co_filename, prev, to) to ``triples`` (a set). */
static void
add_arc(PyObject *triples, PyCodeObject *code, PyObject *prev, PyObject *to)
{
    PyObject *arc = PyTuple_Pack(3, code->co_filename, prev, to);
    if (arc == NULL) {
        PyErr_Clear();
        return;
    }
    if (PySet_Add(triples, arc) < 0) {
        PyErr_Clear();
    }
    Py_DECREF(arc);
}

/* What one event is recorded into. */
typedef struct {
    PyObject *scope;       /* the current exact scope */
    PyObject *last;        /* its ``last`` dict: frame -> previous line */
    PyObject *triples;     /* its ``triples`` set */
    PyFrameObject *frame;  /* borrowed: the frame the event is about */
} Event;

/* Start of both callbacks. NULL: the event is to be recorded here, into ``ev`` (release it
 * with event_done). Otherwise the callback's result: the event is not for this recorder or
 * went to the Python fallback.
 *
 * The scope's dict and set are held for the whole callback: an allocation in it may run a
 * finalizer that closes the scope, which replaces both. */
/* An event outside any scope while the core lingers armed: one unit of the linger budget;
 * the event that spends the last calls on_spent (the core disarms). */
static void
spend_budget(Recorder *self)
{
    if (self->budget > 0 && --self->budget == 0 && self->on_spent != NULL) {
        PyObject *spent = self->on_spent;
        Py_INCREF(spent);
        PyObject *result = PyObject_CallNoArgs(spent);
        Py_DECREF(spent);
        if (result == NULL) {
            PyErr_Clear();
        }
        Py_XDECREF(result);
    }
}

static PyObject *
event_start(Recorder *self, PyObject *fallback, PyObject *const *args, Py_ssize_t nargs,
            Event *ev)
{
    int kind = current_scope(self, &ev->scope);
    if (kind != SCOPE_EXACT) {
        if (kind == SCOPE_NONE && !self->divert) {
            spend_budget(self);
            Py_RETURN_NONE;
        }
        return call_fallback(fallback, args, nargs);
    }
    PyObject *last = SLOT(ev->scope, self->off_last);
    PyObject *triples = SLOT(ev->scope, self->off_triples);
    ev->frame = PyEval_GetFrame();
    if (ev->frame == NULL || last == NULL || triples == NULL || !PyDict_CheckExact(last) ||
        !PySet_CheckExact(triples)) {
        Py_DECREF(ev->scope);
        Py_RETURN_NONE;
    }
    Py_INCREF(last);
    Py_INCREF(triples);
    ev->last = last;
    ev->triples = triples;
    return NULL;
}

static void
event_done(Event *ev)
{
    Py_DECREF(ev->last);
    Py_DECREF(ev->triples);
    Py_DECREF(ev->scope);
}

/* line(code, line): the LINE callback. */
static PyObject *
Recorder_line(Recorder *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyCode_Check(args[0]) || !PyLong_CheckExact(args[1])) {
        Py_RETURN_NONE;
    }
    Event ev;
    PyObject *result = event_start(self, self->line_fallback, args, nargs, &ev);
    if (result != NULL) {
        return result;
    }
    PyCodeObject *code = (PyCodeObject *)args[0];
    PyObject *line = args[1];
    PyObject *prev = PyDict_GetItemWithError(ev.last, (PyObject *)ev.frame); /* borrowed */
    if (prev == NULL) {
        /* the frame's first line: the entry arc */
        prev = PyErr_Occurred() ? NULL : PyLong_FromLong(-(long)code->co_firstlineno);
    }
    else if (prev == self->skip) {
        prev = NULL; /* a frame that was running before the scope opened */
    }
    else {
        Py_INCREF(prev);
    }
    if (prev != NULL && PyDict_SetItem(ev.last, (PyObject *)ev.frame, line) == 0) {
        add_arc(ev.triples, code, prev, line);
    }
    PyErr_Clear();
    Py_XDECREF(prev);
    event_done(&ev);
    Py_RETURN_NONE;
}

/* Code whose frames can start without a LINE event for their first line: generators and
 * coroutines, created (RETURN_GENERATOR) on the line their first resumption continues. */
#define SILENT_START_FLAGS (CO_GENERATOR | CO_COROUTINE | CO_ASYNC_GENERATOR)

/* exit(code, offset, value): the PY_RETURN callback (the frame returns: exit arc). */
static PyObject *
Recorder_exit(Recorder *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyCode_Check(args[0])) {
        Py_RETURN_NONE;
    }
    Event ev;
    PyObject *result = event_start(self, self->exit_fallback, args, nargs, &ev);
    if (result != NULL) {
        return result;
    }
    PyCodeObject *code = (PyCodeObject *)args[0];
    PyObject *prev = PyDict_GetItemWithError(ev.last, (PyObject *)ev.frame);
    if (prev != NULL) {
        Py_INCREF(prev);
        if (PyDict_DelItem(ev.last, (PyObject *)ev.frame) == 0 && prev != self->skip) {
            PyObject *to = PyLong_FromLong(-(long)code->co_firstlineno); /* the exit arc */
            if (to != NULL) {
                add_arc(ev.triples, code, prev, to);
                Py_DECREF(to);
            }
        }
        Py_DECREF(prev);
    }
    else if (!PyErr_Occurred() && (code->co_flags & SILENT_START_FLAGS) &&
             PyLong_Check(args[1])) {
        /* A generator or coroutine that ran in the scope without a LINE event: its whole run
         * stayed on the line where it was created (a one-line generator expression, started
         * with its code armed: CPython 3.13 sees no new line at its first resumption). Its
         * line, entry and exit arcs, as the exit() of the Python callbacks records them. */
        int at = PyCode_Addr2Line(code, (int)PyLong_AsLong(args[1]));
        if (at > 0) {
            PyObject *entry = PyLong_FromLong(-(long)code->co_firstlineno);
            PyObject *line = PyLong_FromLong(at);
            if (entry != NULL && line != NULL) {
                add_arc(ev.triples, code, entry, line);
                add_arc(ev.triples, code, line, entry);
            }
            Py_XDECREF(entry);
            Py_XDECREF(line);
        }
    }
    PyErr_Clear();
    event_done(&ev);
    Py_RETURN_NONE;
}

/* unwind(code, offset, exception): the PY_UNWIND callback. A global event (it fires for every
 * frame an exception leaves, in any code): code the core has not registered returns at once;
 * registered code records its exit arc as exit() does. */
static PyObject *
Recorder_unwind(Recorder *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyCode_Check(args[0]) || self->codes == NULL || self->once == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *key = PyLong_FromVoidPtr(args[0]);
    if (key == NULL) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    int known = PyDict_Contains(self->codes, key);
    if (known == 0) {
        known = PyDict_Contains(self->once, key);
    }
    Py_DECREF(key);
    if (known <= 0) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return Recorder_exit(self, args, nargs);
}

/* Seconds of a monotonic clock (perf_counter's). */
static double
now_seconds(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyTime_t t;
    if (PyTime_PerfCounterRaw(&t) < 0) {
        return 0.0;
    }
    return PyTime_AsSecondsDouble(t);
#else
    return _PyTime_AsSecondsDouble(_PyTime_GetPerfCounter());
#endif
}

/* Take ``lock`` (the core's RLock) without waiting: 1 when taken. */
static int
try_lock(PyObject *lock)
{
    PyObject *got = PyObject_CallMethodOneArg(lock, name_acquire, Py_False);
    if (got == NULL) {
        PyErr_Clear();
        return 0;
    }
    int taken = got == Py_True;
    Py_DECREF(got);
    return taken;
}

static void
unlock(PyObject *lock)
{
    PyObject *done = PyObject_CallMethodNoArgs(lock, name_release);
    if (done == NULL) {
        PyErr_Clear();
    }
    Py_XDECREF(done);
}

/* set_local_events(tool, code, events): 0 when set, -1 when it raised (error cleared). */
static int
set_local_ok(Recorder *self, PyObject *code, PyObject *events)
{
    PyObject *call[3] = {self->tool, code, events};
    PyObject *result = PyObject_Vectorcall(self->set_local, call, 3, NULL);
    if (result == NULL) {
        PyErr_Clear();
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

/* set_local_events(tool, code, events), errors swallowed. */
static void
set_local(Recorder *self, PyObject *code, PyObject *events)
{
    (void)set_local_ok(self, code, events);
}

/* Work watch() does on the core's sets for one call of registered code (``key`` = its id),
 * under the core's lock; ``started``: when the callback began (its time is the work's). */
typedef void (*LockedWork)(Recorder *self, PyObject *code, PyObject *key, double started);

/* Run ``work`` under the core's lock, taken without waiting: when another thread holds it, the
 * call goes to the Python callback, which waits for it. */
static PyObject *
under_core_lock(Recorder *self, PyObject *const *args, Py_ssize_t nargs, PyObject *key,
                LockedWork work)
{
    double started = now_seconds();
    PyObject *lock = Py_NewRef(self->lock);
    if (!try_lock(lock)) {
        Py_DECREF(lock);
        return call_fallback(self->watch_fallback, args, nargs);
    }
    work(self, args[0], key, started);
    PyErr_Clear();
    unlock(lock);
    Py_DECREF(lock);
    Py_RETURN_NONE;
}

/* A call in an exact scope while armed: promote the code to the exact-mode events, in this
 * very frame (the Python callback's ``promote``). */
static void
promote(Recorder *self, PyObject *code, PyObject *key, double started)
{
    if (self->armed && PyDict_Contains(self->promoted, key) == 0 &&
        PyDict_Contains(self->codes, key) == 1 && PyDict_SetItem(self->promoted, key, code) == 0) {
        if (PySet_Discard(self->watching, key) < 0) {
            PyErr_Clear();
        }
        set_local(self, code, self->exact_events);
        self->promote_cost += now_seconds() - started;
    }
}

/* A call outside any scope while disarmed: take off the watch a disarm left on, and remember
 * the code as called by unsampled work (the Python callback's ``unwatch``). */
static void
unwatch(Recorder *self, PyObject *code, PyObject *key, double started)
{
    if (!self->armed && PySet_Contains(self->watching, key) == 1 &&
        PySet_Discard(self->watching, key) == 1) {
        if (PySet_Add(self->bare, key) < 0 || PySet_Add(self->hot, key) < 0) {
            PyErr_Clear();
        }
        set_local(self, code, zero);
        self->unwatch_cost += now_seconds() - started;
    }
}

/* Whether attach_watch gave watch() what promote() and unwatch() need. */
static int
watch_attached(Recorder *self)
{
    return self->lock != NULL && self->promoted != NULL && self->watching != NULL &&
           self->bare != NULL && self->hot != NULL && self->set_local != NULL &&
           self->tool != NULL && self->exact_events != NULL;
}

/* watch(code, offset): the PY_START and PY_RESUME callback. For registered code, while census
 * is off: a call outside any scope while exact scopes are armed (unsampled work next to a
 * sampled request, or while the core lingers) returns here, spending one unit of budget; a
 * call in an exact scope while armed promotes the code; a call outside any scope while
 * disarmed takes the watch off. Everything else goes to ``watch_fallback``: code not
 * registered yet (its first call), census, other scope types. */
static PyObject *
Recorder_watch(Recorder *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyCode_Check(args[0])) {
        Py_RETURN_NONE;
    }
    if (self->divert || self->codes == NULL) {
        return call_fallback(self->watch_fallback, args, nargs);
    }
    PyObject *key = PyLong_FromVoidPtr(args[0]);
    int known = key == NULL ? -1 : PyDict_Contains(self->codes, key);
    if (known <= 0) {
        Py_XDECREF(key);
        PyErr_Clear();
        return call_fallback(self->watch_fallback, args, nargs);
    }
    PyObject *scope = NULL;
    int kind = current_scope(self, &scope);
    Py_XDECREF(scope);
    PyObject *result;
    if (self->armed && kind == SCOPE_NONE) {
        spend_budget(self);
        result = Py_NewRef(Py_None);
    }
    else if (self->armed && kind == SCOPE_EXACT && watch_attached(self)) {
        result = under_core_lock(self, args, nargs, key, promote);
    }
    else if (!self->armed && kind == SCOPE_NONE && watch_attached(self)) {
        result = under_core_lock(self, args, nargs, key, unwatch);
    }
    else {
        result = call_fallback(self->watch_fallback, args, nargs);
    }
    Py_DECREF(key);
    return result;
}

/* attach_watch(lock, promoted, watching, bare, hot, set_local_events, tool, exact_events):
 * what watch() promotes and unwatches with. */
static PyObject *
Recorder_attach_watch(Recorder *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8 || !PyDict_CheckExact(args[1]) || !PySet_CheckExact(args[2]) ||
        !PySet_CheckExact(args[3]) || !PySet_CheckExact(args[4]) || !PyCallable_Check(args[5]) ||
        !PyLong_CheckExact(args[6]) || !PyLong_CheckExact(args[7])) {
        PyErr_SetString(PyExc_TypeError,
                        "attach_watch(lock, promoted: dict, watching: set, bare: set, hot: set, "
                        "set_local_events, tool: int, exact_events: int)");
        return NULL;
    }
    hold(&self->lock, args[0]);
    hold(&self->promoted, args[1]);
    hold(&self->watching, args[2]);
    hold(&self->bare, args[3]);
    hold(&self->hot, args[4]);
    hold(&self->set_local, args[5]);
    hold(&self->tool, args[6]);
    hold(&self->exact_events, args[7]);
    Py_RETURN_NONE;
}

/* The registered code object of ``key`` (a new reference), or NULL (an error set only when
 * the lookup itself failed). */
static PyObject *
registered(Recorder *self, PyObject *key)
{
    PyObject *code = PyDict_GetItemWithError(self->codes, key);
    return code == NULL ? NULL : Py_NewRef(code);
}

/* lazy_arm(watch_events): the arm of exact scopes while census is off (the core's ``_apply``
 * with ``exact_only``): the registered code that carries nothing gets the watch (or the
 * exact-mode events, if it was promoted). The caller holds the core's lock. Returns the
 * number of code objects toggled. */
static PyObject *
Recorder_lazy_arm(Recorder *self, PyObject *watch_events)
{
    if (!watch_attached(self) || self->codes == NULL || !PyLong_CheckExact(watch_events)) {
        PyErr_SetString(PyExc_TypeError, "lazy_arm(watch_events: int) needs attach_watch()");
        return NULL;
    }
    PyObject *keys = PySequence_List(self->bare);
    if (keys == NULL || PySet_Clear(self->bare) < 0) {
        Py_XDECREF(keys);
        return NULL;
    }
    Py_ssize_t toggled = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(keys); i++) {
        PyObject *key = PyList_GET_ITEM(keys, i);
        PyObject *code = registered(self, key);
        if (code == NULL) {
            if (PyErr_Occurred()) {
                Py_DECREF(keys);
                return NULL;
            }
            continue;
        }
        int promoted = PyDict_Contains(self->promoted, key);
        PyObject *want = promoted == 1 ? self->exact_events : watch_events;
        int ok = promoted >= 0 && set_local_ok(self, code, want) == 0;
        PyErr_Clear();
        Py_DECREF(code);
        toggled++;
        int stored;
        if (ok && want == watch_events) {
            stored = PySet_Add(self->watching, key);
        }
        else {
            stored = PySet_Discard(self->watching, key) < 0 ? -1 : 0;
            if (!ok && stored == 0) {
                stored = PySet_Add(self->bare, key); /* unknown: the next arm sets it again */
            }
        }
        if (stored < 0) {
            Py_DECREF(keys);
            return NULL;
        }
    }
    Py_DECREF(keys);
    return PyLong_FromSsize_t(toggled);
}

/* Append the registered code of each key of ``keys`` that is also in ``also`` to
 * ``targets``. */
static int
add_registered(Recorder *self, PyObject *targets, PyObject *keys, PyObject *also)
{
    PyObject *iter = PyObject_GetIter(keys);
    if (iter == NULL) {
        return -1;
    }
    PyObject *key;
    int failed = 0;
    while (!failed && (key = PyIter_Next(iter)) != NULL) {
        int wanted = PySet_Contains(also, key);
        PyObject *code = wanted == 1 ? registered(self, key) : NULL;
        failed = wanted < 0 || (code == NULL && PyErr_Occurred()) ||
                 (code != NULL && PyList_Append(targets, code) < 0);
        Py_XDECREF(code);
        Py_DECREF(key);
    }
    Py_DECREF(iter);
    return failed || PyErr_Occurred() ? -1 : 0;
}

/* lazy_disarm(take_hot): the disarm of exact scopes while census is off (the core's ``_apply``
 * with ``exact_only``): the promoted code loses the exact-mode events and, with ``take_hot``,
 * the watched code that unsampled work called loses its watch; the rest keeps its watch. The
 * caller holds the core's lock. Returns the number of code objects toggled. */
static PyObject *
Recorder_lazy_disarm(Recorder *self, PyObject *take_hot)
{
    if (!watch_attached(self) || self->codes == NULL) {
        PyErr_SetString(PyExc_TypeError, "lazy_disarm(take_hot) needs attach_watch()");
        return NULL;
    }
    int hot = PyObject_IsTrue(take_hot);
    PyObject *targets = hot < 0 ? NULL : PyDict_Values(self->promoted);
    if (targets == NULL) {
        return NULL;
    }
    /* The intersection of the watched and the hot code, walked from the smaller set. */
    int small_hot = PySet_GET_SIZE(self->hot) <= PySet_GET_SIZE(self->watching);
    if (hot && add_registered(self, targets, small_hot ? self->hot : self->watching,
                              small_hot ? self->watching : self->hot) < 0) {
        Py_DECREF(targets);
        return NULL;
    }
    PyDict_Clear(self->promoted);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(targets); i++) {
        PyObject *code = PyList_GET_ITEM(targets, i);
        set_local(self, code, zero);
        PyObject *key = PyLong_FromVoidPtr(code);
        if (key == NULL || PySet_Discard(self->watching, key) < 0 ||
            PySet_Add(self->bare, key) < 0) {
            Py_XDECREF(key);
            Py_DECREF(targets);
            return NULL;
        }
        Py_DECREF(key);
    }
    Py_ssize_t toggled = PyList_GET_SIZE(targets);
    Py_DECREF(targets);
    return PyLong_FromSsize_t(toggled);
}

static PyMethodDef Recorder_methods[] = {
    {"watch", (PyCFunction)(void (*)(void))Recorder_watch, METH_FASTCALL,
     "watch(code, offset): the PY_START and PY_RESUME callback."},
    {"attach_watch", (PyCFunction)(void (*)(void))Recorder_attach_watch, METH_FASTCALL,
     "attach_watch(lock, promoted, watching, bare, hot, set_local_events, tool, exact_events): "
     "what watch() promotes code and takes watches off with."},
    {"lazy_arm", (PyCFunction)Recorder_lazy_arm, METH_O,
     "lazy_arm(watch_events): watch the registered code that carries nothing (lock held)."},
    {"lazy_disarm", (PyCFunction)Recorder_lazy_disarm, METH_O,
     "lazy_disarm(take_hot): take the exact-mode events off the promoted code, and with "
     "take_hot the watch off the watched code unsampled work called (lock held)."},
    {"line", (PyCFunction)(void (*)(void))Recorder_line, METH_FASTCALL,
     "line(code, line): the LINE callback."},
    {"exit", (PyCFunction)(void (*)(void))Recorder_exit, METH_FASTCALL,
     "exit(code, offset, value): the PY_RETURN callback."},
    {"unwind", (PyCFunction)(void (*)(void))Recorder_unwind, METH_FASTCALL,
     "unwind(code, offset, exception): the PY_UNWIND callback."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Recorder_members[] = {
    {"divert", T_INT, offsetof(Recorder, divert), 0,
     "Nonzero while events outside any scope need the Python callbacks (census)."},
    {"budget", T_PYSSIZET, offsetof(Recorder, budget), 0,
     "Events outside any scope left before on_spent is called (0: not counting)."},
    {"on_spent", T_OBJECT, offsetof(Recorder, on_spent), 0,
     "Called with no arguments by the event that spends the last unit of budget."},
    {"armed", T_INT, offsetof(Recorder, armed), 0,
     "Nonzero while exact scopes are armed: watch() returns for unscoped calls and promotes "
     "code called in an exact scope; zero: it takes off the watches a disarm left on."},
    {"watch_fallback", T_OBJECT, offsetof(Recorder, watch_fallback), 0,
     "The Python PY_START callback, for every call watch() does not answer itself."},
    {"lock", T_OBJECT, offsetof(Recorder, lock), 0,
     "The core's lock, taken by watch() to promote and unwatch (replaced after a fork)."},
    {"promote_cost", T_DOUBLE, offsetof(Recorder, promote_cost), 0,
     "Seconds watch() spent promoting code since the core last took (and zeroed) it."},
    {"unwatch_cost", T_DOUBLE, offsetof(Recorder, unwatch_cost), 0,
     "Seconds watch() spent taking watches off since the core last took (and zeroed) it."},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject RecorderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "runcov.tracing._accel.Recorder",
    .tp_basicsize = sizeof(Recorder),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Recording callbacks of the sys.monitoring core for exact scopes.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Recorder_init,
    .tp_dealloc = (destructor)Recorder_dealloc,
    .tp_traverse = (traverseproc)Recorder_traverse,
    .tp_clear = (inquiry)Recorder_clear,
    .tp_methods = Recorder_methods,
    .tp_members = Recorder_members,
};

/* -- the settrace core ----------------------------------------------------------------------- */

/* A frame's local tracer in an exact scope (a function's, or on 3.11+ a generator's or
 * coroutine's): the arcs it adds to and the frame's previous line. */
typedef struct {
    PyObject_HEAD
    PyObject *arcs; /* the scope's set of (from, to) for the frame's file */
    long last;
    long first; /* co_firstlineno */
    /* Generator-like code: its bytecode (co_code), to tell a yield from a return; else NULL. */
    PyObject *co_code;
} FunctionArcs;

static PyTypeObject FunctionArcsType;

static PyObject *name_call, *name_exception, *name_line, *name_return, *name_opcode, *name_f_trace;

static void
function_arcs_add(FunctionArcs *self, long from, long to)
{
    PyObject *a = PyLong_FromLong(from);
    PyObject *b = a != NULL ? PyLong_FromLong(to) : NULL;
    PyObject *arc = b != NULL ? PyTuple_Pack(2, a, b) : NULL;
    Py_XDECREF(a);
    Py_XDECREF(b);
    if (arc == NULL) {
        PyErr_Clear();
        return;
    }
    if (PySet_Add(self->arcs, arc) < 0) {
        PyErr_Clear();
    }
    Py_DECREF(arc);
}

/* A line or return event of the frame (other events are ignored). */
static void
function_arcs_event(FunctionArcs *self, PyFrameObject *frame, int what)
{
    if (what == PyTrace_LINE) {
        long line = PyFrame_GetLineNumber(frame);
        function_arcs_add(self, self->last, line);
        self->last = line;
    }
    else if (what == PyTrace_RETURN) {
#if RESUMES_IN_C
        if (self->co_code != NULL) {
            Py_ssize_t next = (Py_ssize_t)PyFrame_GetLasti(frame) + 2;
            if (next < PyBytes_GET_SIZE(self->co_code) &&
                (unsigned char)PyBytes_AS_STRING(self->co_code)[next] == RESUME) {
                return; /* suspended at a yield or await: it resumes from this line */
            }
        }
#endif
        function_arcs_add(self, self->last, -self->first);
    }
}

/* Called as a Python local tracer, (frame, event, arg): by sys.settrace's trampoline when
 * another tool's tracer replaced runcov's in this thread (it keeps calling the frames' local
 * tracers). Records as the dispatcher would; returns itself. */
static PyObject *
FunctionArcs_call(FunctionArcs *self, PyObject *args, PyObject *kwds)
{
    PyObject *frame, *event, *arg;
    if (PyArg_ParseTuple(args, "OOO", &frame, &event, &arg) && PyFrame_Check(frame) &&
        PyUnicode_Check(event) && self->arcs != NULL) {
        if (PyUnicode_Compare(event, name_line) == 0) {
            function_arcs_event(self, (PyFrameObject *)frame, PyTrace_LINE);
        }
        else if (PyUnicode_Compare(event, name_return) == 0) {
            function_arcs_event(self, (PyFrameObject *)frame, PyTrace_RETURN);
        }
    }
    PyErr_Clear();
    Py_INCREF(self);
    return (PyObject *)self;
}

/* Not tracked by the garbage collector: it refers only to a set of int pairs, so it can be
 * part of no reference cycle, and a frame's local tracer is created for every call. */
static void
FunctionArcs_dealloc(FunctionArcs *self)
{
    Py_CLEAR(self->arcs);
    Py_CLEAR(self->co_code);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* A FunctionArcs adding to ``arcs`` (a set), from ``last``; it takes over ``co_code`` (a
 * generator-like code's bytecode, or NULL). */
static PyObject *
new_function_arcs(PyObject *arcs, long last, long first, PyObject *co_code)
{
    FunctionArcs *self = PyObject_New(FunctionArcs, &FunctionArcsType);
    if (self == NULL) {
        Py_XDECREF(co_code);
        return NULL;
    }
    Py_INCREF(arcs);
    self->arcs = arcs;
    self->last = last;
    self->first = first;
    self->co_code = co_code;
    return (PyObject *)self;
}

/* function_arcs(arcs, last, first): an ordinary function frame's FunctionArcs (from Python). */
static PyObject *
function_arcs_new(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PySet_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "function_arcs(arcs: set, last: int, first: int)");
        return NULL;
    }
    long last = PyLong_AsLong(args[1]);
    long first = last == -1 && PyErr_Occurred() ? -1 : PyLong_AsLong(args[2]);
    if (first == -1 && PyErr_Occurred()) {
        return NULL;
    }
    return new_function_arcs(args[0], last, first, NULL);
}

static PyTypeObject FunctionArcsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "runcov.tracing._accel.FunctionArcs",
    .tp_basicsize = sizeof(FunctionArcs),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A frame's local tracer in an exact scope (made by function_arcs()).",
    .tp_call = (ternaryfunc)FunctionArcs_call,
    .tp_dealloc = (destructor)FunctionArcs_dealloc,
};

/* A frame's local tracer in a census scope: first hits of its code's lines in the epoch. */
typedef struct {
    PyObject_HEAD
    PyObject *hits;       /* the core's set of lines of this file hit in the epoch */
    PyObject *mine;       /* the scope's census_lines dict: co_filename -> set of lines */
    PyObject *filename;
    PyObject *code_lines; /* frozenset of the lines of this code that produce line events */
    PyObject *saturated;  /* the core's dict: id(code) -> code, whose lines were all hit */
    PyObject *key;        /* id(code) */
    PyObject *code;
} CensusLines;

static PyTypeObject CensusLinesType;

/* A line event: a first hit goes to the epoch and the scope; a code object whose lines were
 * all hit is not traced again in this epoch. */
static void
census_lines_line(CensusLines *self, PyFrameObject *frame)
{
    PyObject *line = PyLong_FromLong(PyFrame_GetLineNumber(frame));
    if (line == NULL) {
        PyErr_Clear();
        return;
    }
    int known = PySet_Contains(self->hits, line);
    if (known == 0 && PySet_Add(self->hits, line) == 0) {
        PyObject *mine = set_in(self->mine, self->filename);
        if (mine != NULL && PySet_Add(mine, line) == 0 &&
            PyObject_RichCompareBool(self->code_lines, self->hits, Py_LE) == 1) {
            PyDict_SetItem(self->saturated, self->key, self->code);
        }
    }
    PyErr_Clear();
    Py_DECREF(line);
}

/* census_lines(hits, mine, filename, code_lines, saturated, key, code) */
static PyObject *
census_lines_new(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7 || !PySet_CheckExact(args[0]) || !PyDict_CheckExact(args[1]) ||
        !PyAnySet_Check(args[3]) || !PyDict_CheckExact(args[4])) {
        PyErr_SetString(PyExc_TypeError, "census_lines(hits: set, mine: dict, filename, "
                                         "code_lines: frozenset, saturated: dict, key, code)");
        return NULL;
    }
    CensusLines *self = PyObject_GC_New(CensusLines, &CensusLinesType);
    if (self == NULL) {
        return NULL;
    }
    PyObject **fields[7] = {&self->hits, &self->mine, &self->filename, &self->code_lines,
                            &self->saturated, &self->key, &self->code};
    for (int i = 0; i < 7; i++) {
        Py_INCREF(args[i]);
        *fields[i] = args[i];
    }
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

/* As a Python local tracer (another tool's trampoline calling it): records, returns itself. */
static PyObject *
CensusLines_call(CensusLines *self, PyObject *args, PyObject *kwds)
{
    PyObject *frame, *event, *arg;
    if (PyArg_ParseTuple(args, "OOO", &frame, &event, &arg) && PyFrame_Check(frame) &&
        PyUnicode_Check(event) && PyUnicode_Compare(event, name_line) == 0) {
        census_lines_line(self, (PyFrameObject *)frame);
    }
    PyErr_Clear();
    Py_INCREF(self);
    return (PyObject *)self;
}

static int
CensusLines_traverse(CensusLines *self, visitproc visit, void *arg)
{
    Py_VISIT(self->hits);
    Py_VISIT(self->mine);
    Py_VISIT(self->filename);
    Py_VISIT(self->code_lines);
    Py_VISIT(self->saturated);
    Py_VISIT(self->key);
    Py_VISIT(self->code);
    return 0;
}

static int
CensusLines_clear(CensusLines *self)
{
    Py_CLEAR(self->hits);
    Py_CLEAR(self->mine);
    Py_CLEAR(self->filename);
    Py_CLEAR(self->code_lines);
    Py_CLEAR(self->saturated);
    Py_CLEAR(self->key);
    Py_CLEAR(self->code);
    return 0;
}

static void
CensusLines_dealloc(CensusLines *self)
{
    PyObject_GC_UnTrack(self);
    CensusLines_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject CensusLinesType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "runcov.tracing._accel.CensusLines",
    .tp_basicsize = sizeof(CensusLines),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A frame's local tracer in a census scope (made by census_lines()).",
    .tp_call = (ternaryfunc)CensusLines_call,
    .tp_dealloc = (destructor)CensusLines_dealloc,
    .tp_traverse = (traverseproc)CensusLines_traverse,
    .tp_clear = (inquiry)CensusLines_clear,
};

typedef struct {
    PyObject_HEAD
    PyObject *call_handler; /* the core's global_trace(frame, "call", arg) */
    /* For call events decided here (an exact scope is current; see handle_call): */
    PyObject *var;            /* the ContextVar holding the current scope */
    PyTypeObject *scope_type; /* ScopeState */
    Py_ssize_t off_closed, off_is_census, off_files, off_census_lines;
    PyObject *classify;       /* Roots.classify(filename) -> path or None */
    PyObject *under_roots;    /* co_filename -> True / False (classify's answer), this side */
    /* Census (the core's, kept in place): co_filename -> lines hit in the epoch; id(code) ->
     * code whose lines were all hit; id(code) -> (code, frozenset of its event lines). */
    PyObject *census, *saturated, *code_lines;
    /* The local tracer of the frame that had the last event (both held, so the frame's
     * address cannot be reused while cached): consecutive events of one frame skip the
     * frame's f_trace attribute lookup. Set when a call gets its local tracer, dropped when
     * the frame returns. */
    PyObject *cached_frame;
    PyObject *cached_local;
} Dispatcher;

static void
forget_cached(Dispatcher *self)
{
    Py_CLEAR(self->cached_frame);
    Py_CLEAR(self->cached_local);
}

static void
remember_local(Dispatcher *self, PyFrameObject *frame, PyObject *local)
{
    /* Replaced before the old ones are released: releasing a frame may run a finalizer. */
    PyObject *old_frame = self->cached_frame;
    PyObject *old_local = self->cached_local;
    Py_INCREF(frame);
    Py_INCREF(local);
    self->cached_frame = (PyObject *)frame;
    self->cached_local = local;
    Py_XDECREF(old_frame);
    Py_XDECREF(old_local);
}

/* Call a Python tracer as sys.settrace's trampoline does (minus the locals copies): a result
 * other than None becomes the frame's local tracer. Errors are swallowed: tracing goes on and
 * the application never sees them. */
static void
call_python_tracer(Dispatcher *self, PyObject *tracer, PyFrameObject *frame, PyObject *name,
                   PyObject *arg)
{
    PyObject *args[3] = {(PyObject *)frame, name, arg != NULL ? arg : Py_None};
    PyObject *result = PyObject_Vectorcall(tracer, args, 3, NULL);
    if (result == NULL) {
        PyErr_Clear();
        return;
    }
    if (result != Py_None && result != tracer) {
        if (PyObject_SetAttr((PyObject *)frame, name_f_trace, result) < 0) {
            PyErr_Clear();
        }
        else {
            remember_local(self, frame, result);
        }
    }
    Py_DECREF(result);
}

#define GENERATOR_LIKE (CO_GENERATOR | CO_COROUTINE | CO_ITERABLE_COROUTINE | CO_ASYNC_GENERATOR)

/* Whether ``filename`` lies under the core's roots: Py_True, Py_False (borrowed), or NULL. */
static PyObject *
under_roots(Dispatcher *self, PyObject *filename)
{
    PyObject *under = PyDict_GetItemWithError(self->under_roots, filename);
    if (under != NULL || PyErr_Occurred()) {
        return under;
    }
    PyObject *path = PyObject_CallOneArg(self->classify, filename);
    if (path == NULL) {
        return NULL;
    }
    under = path == Py_None ? Py_False : Py_True;
    Py_DECREF(path);
    if (PyDict_SetItem(self->under_roots, filename, under) < 0) {
        return NULL;
    }
    return under;
}

/* A call event in a census scope, under the roots: a code object whose lines were all hit in
 * the epoch is not traced; any other frame gets a CensusLines. 0: decided here; -1: Python
 * decides (the code's event lines are not known yet, anything unexpected). */
static int
census_call(Dispatcher *self, PyObject *scope, PyFrameObject *frame, PyCodeObject *code)
{
    if (self->census == NULL) {
        return -1;
    }
    int decided = -1;
    PyObject *key = PyLong_FromVoidPtr(code);
    if (key == NULL) {
        PyErr_Clear();
        return -1;
    }
    int saturated = PyDict_Contains(self->saturated, key);
    if (saturated != 0) {
        decided = saturated > 0 ? 0 : -1; /* every line already hit in this epoch */
        goto done;
    }
    PyObject *own = PyDict_GetItemWithError(self->code_lines, key); /* (code, lines) */
    if (own == NULL || !PyTuple_CheckExact(own) || PyTuple_GET_SIZE(own) != 2 ||
        PyTuple_GET_ITEM(own, 0) != (PyObject *)code) {
        goto done; /* Python computes the code's lines once */
    }
    PyObject *filename = code->co_filename;
    PyObject *hits = set_in(self->census, filename);
    PyObject *mine = SLOT(scope, self->off_census_lines);
    if (hits == NULL || !PySet_CheckExact(hits) || mine == NULL || !PyDict_CheckExact(mine)) {
        goto done;
    }
    PyObject *args[7] = {hits, mine, filename, PyTuple_GET_ITEM(own, 1), self->saturated, key,
                         (PyObject *)code};
    PyObject *local = census_lines_new(NULL, args, 7);
    if (local == NULL) {
        goto done;
    }
    if (PyObject_SetAttr((PyObject *)frame, name_f_trace, local) == 0) {
        remember_local(self, frame, local);
        decided = 0;
    }
    Py_DECREF(local);
done:
    PyErr_Clear();
    Py_DECREF(key);
    return decided;
}

/* A call event while an exact scope is current, the common case in a measured request: a
 * frame outside the roots gets no local tracer, an ordinary function's frame gets a
 * FunctionArcs. 0: decided here; -1: the core's Python call handler decides (no or another
 * scope, generator-like code, anything unexpected). */
static int
handle_call(Dispatcher *self, PyFrameObject *frame)
{
    if (self->var == NULL) {
        return -1;
    }
    PyObject *scope = NULL;
    if (PyContextVar_Get(self->var, Py_None, &scope) < 0) {
        PyErr_Clear();
        return -1;
    }
    int decided = -1;
    PyCodeObject *code = NULL;
    if (Py_TYPE(scope) != self->scope_type || SLOT(scope, self->off_closed) != Py_False) {
        goto done; /* None, closed, another kind: Python (it also takes the tracer off) */
    }
    code = PyFrame_GetCode(frame);
    PyObject *filename = code->co_filename;
    PyObject *under = under_roots(self, filename);
    if (under == NULL) {
        PyErr_Clear();
        goto done;
    }
    if (under == Py_False) {
        decided = 0; /* outside the roots: no line events wanted */
        goto done;
    }
    PyObject *is_census = SLOT(scope, self->off_is_census);
    if (is_census == Py_True) {
        decided = census_call(self, scope, frame, code);
        goto done;
    }
    if (is_census != Py_False) {
        goto done;
    }
    PyObject *co_code = NULL;
    long last = -code->co_firstlineno; /* an ordinary function's call event is its entry */
    if (code->co_flags & GENERATOR_LIKE) {
#if RESUMES_IN_C
        co_code = PyCode_GetCode(code);
        if (co_code == NULL || !PyBytes_Check(co_code)) {
            Py_XDECREF(co_code);
            PyErr_Clear();
            goto done;
        }
        Py_ssize_t at = (Py_ssize_t)PyFrame_GetLasti(frame) + 1;
        if (at < 1 || at >= PyBytes_GET_SIZE(co_code)) {
            Py_DECREF(co_code);
            goto done;
        }
        if (PyBytes_AS_STRING(co_code)[at] != 0) {
            last = PyFrame_GetLineNumber(frame); /* resumed: continues from its line */
        }
#else
        goto done; /* Python's generator tracer */
#endif
    }
    PyObject *files = SLOT(scope, self->off_files);
    PyObject *arcs = files != NULL && PyDict_CheckExact(files) ? set_in(files, filename) : NULL;
    PyObject *local = NULL;
    if (arcs == NULL || !PySet_CheckExact(arcs)) {
        Py_XDECREF(co_code);
    }
    else {
        local = new_function_arcs(arcs, last, code->co_firstlineno, co_code);
    }
    if (local == NULL) {
        PyErr_Clear();
        goto done;
    }
    if (PyObject_SetAttr((PyObject *)frame, name_f_trace, local) < 0) {
        PyErr_Clear();
    }
    else {
        remember_local(self, frame, local);
    }
    Py_DECREF(local);
    decided = 0;
done:
    Py_XDECREF(code);
    Py_DECREF(scope);
    return decided;
}

/* The C-level trace function (Py_tracefunc). */
static int
dispatch(PyObject *obj, PyFrameObject *frame, int what, PyObject *arg)
{
    Dispatcher *self = (Dispatcher *)obj;
    if (what == PyTrace_CALL) {
        if (handle_call(self, frame) < 0 && self->call_handler != NULL) {
            call_python_tracer(self, self->call_handler, frame, name_call, arg);
        }
        return 0;
    }
    PyObject *name;
    switch (what) {
    case PyTrace_LINE:
        name = name_line;
        break;
    case PyTrace_RETURN:
        name = name_return;
        break;
    case PyTrace_EXCEPTION:
        name = name_exception;
        break;
    case PyTrace_OPCODE:
        name = name_opcode;
        break;
    default:
        return 0;
    }
    PyObject *local;
    if ((PyObject *)frame == self->cached_frame) {
        local = self->cached_local;
        Py_INCREF(local);
    }
    else {
        local = PyObject_GetAttr((PyObject *)frame, name_f_trace); /* None when unset */
        if (local == NULL) {
            PyErr_Clear();
            return 0;
        }
        if (local != Py_None && what != PyTrace_RETURN) {
            remember_local(self, frame, local);
        }
    }
    if (Py_TYPE(local) == &FunctionArcsType) {
        if (((FunctionArcs *)local)->arcs != NULL) {
            function_arcs_event((FunctionArcs *)local, frame, what);
        }
    }
    else if (Py_TYPE(local) == &CensusLinesType) {
        if (what == PyTrace_LINE && ((CensusLines *)local)->hits != NULL) {
            census_lines_line((CensusLines *)local, frame);
        }
    }
    else if (local != Py_None) {
        call_python_tracer(self, local, frame, name, arg);
    }
    if (what == PyTrace_RETURN && (PyObject *)frame == self->cached_frame) {
        forget_cached(self); /* the frame is done (or suspended: a new call event follows) */
    }
    Py_DECREF(local);
    return 0;
}

static int
Dispatcher_init(Dispatcher *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"call_handler", "var",       "scope_type", "classify",
                             "census",       "saturated", "code_lines", NULL};
    PyObject *handler, *var, *scope_type, *classify, *census_dict, *saturated, *code_lines;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!O!OO!O!O!", kwlist, &handler,
                                     &PyContextVar_Type, &var, &PyType_Type, &scope_type,
                                     &classify, &PyDict_Type, &census_dict, &PyDict_Type,
                                     &saturated, &PyDict_Type, &code_lines)) {
        return -1;
    }
    PyTypeObject *type = (PyTypeObject *)scope_type;
    Py_ssize_t closed = slot_offset(type, "closed");
    Py_ssize_t census = closed < 0 ? -1 : slot_offset(type, "is_census");
    Py_ssize_t files = census < 0 ? -1 : slot_offset(type, "files");
    Py_ssize_t census_lines = files < 0 ? -1 : slot_offset(type, "census_lines");
    if (census_lines < 0) {
        return -1;
    }
    self->off_census_lines = census_lines;
    hold(&self->census, census_dict);
    hold(&self->saturated, saturated);
    hold(&self->code_lines, code_lines);
    PyObject *cache = PyDict_New();
    if (cache == NULL) {
        return -1;
    }
    self->off_closed = closed;
    self->off_is_census = census;
    self->off_files = files;
    hold(&self->call_handler, handler);
    hold(&self->var, var);
    hold((PyObject **)&self->scope_type, scope_type);
    hold(&self->classify, classify);
    Py_XSETREF(self->under_roots, cache); /* new */
    return 0;
}

/* forget_roots(): the core's roots changed; ask classify again. */
static PyObject *
Dispatcher_forget_roots(Dispatcher *self, PyObject *Py_UNUSED(ignored))
{
    if (self->under_roots != NULL) {
        PyDict_Clear(self->under_roots);
    }
    Py_RETURN_NONE;
}

/* install(): make this the calling thread's trace function (what sys.gettrace() returns). */
static PyObject *
Dispatcher_install(Dispatcher *self, PyObject *Py_UNUSED(ignored))
{
    PyEval_SetTrace(dispatch, (PyObject *)self);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Called from Python (sys.settrace(dispatcher) or a trampoline): as the call handler. */
static PyObject *
Dispatcher_call(Dispatcher *self, PyObject *args, PyObject *kwds)
{
    if (self->call_handler == NULL) {
        Py_RETURN_NONE;
    }
    return PyObject_Call(self->call_handler, args, kwds);
}

static int
Dispatcher_traverse(Dispatcher *self, visitproc visit, void *arg)
{
    Py_VISIT(self->call_handler);
    Py_VISIT(self->var);
    Py_VISIT(self->scope_type);
    Py_VISIT(self->classify);
    Py_VISIT(self->under_roots);
    Py_VISIT(self->census);
    Py_VISIT(self->saturated);
    Py_VISIT(self->code_lines);
    Py_VISIT(self->cached_frame);
    Py_VISIT(self->cached_local);
    return 0;
}

static int
Dispatcher_clear(Dispatcher *self)
{
    Py_CLEAR(self->call_handler);
    Py_CLEAR(self->var);
    Py_CLEAR(self->scope_type);
    Py_CLEAR(self->classify);
    Py_CLEAR(self->under_roots);
    Py_CLEAR(self->census);
    Py_CLEAR(self->saturated);
    Py_CLEAR(self->code_lines);
    forget_cached(self);
    return 0;
}

static void
Dispatcher_dealloc(Dispatcher *self)
{
    PyObject_GC_UnTrack(self);
    Dispatcher_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Dispatcher_methods[] = {
    {"install", (PyCFunction)Dispatcher_install, METH_NOARGS,
     "install(): make this the calling thread's trace function."},
    {"forget_roots", (PyCFunction)Dispatcher_forget_roots, METH_NOARGS,
     "forget_roots(): the core's roots changed."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject DispatcherType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "runcov.tracing._accel.Dispatcher",
    .tp_basicsize = sizeof(Dispatcher),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Dispatcher(call_handler, var, scope_type, classify, census, saturated, code_lines): "
               "the settrace core's C-level trace function.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Dispatcher_init,
    .tp_call = (ternaryfunc)Dispatcher_call,
    .tp_dealloc = (destructor)Dispatcher_dealloc,
    .tp_traverse = (traverseproc)Dispatcher_traverse,
    .tp_clear = (inquiry)Dispatcher_clear,
    .tp_methods = Dispatcher_methods,
};

/* -- the span processor's gate --------------------------------------------------------------- */

/* The OpenTelemetry SDK calls every span processor's on_start and on_end for every span. For
 * most request spans runcov has nothing to do beyond deciding so: the span is of another kind,
 * or its trace id is below the sampling threshold; and at its end, counting the request as
 * seen. ``SpanGate`` does exactly that in C and hands every other case to the processor's
 * Python methods (``start_fallback``, ``end_fallback``), which stay the reference
 * implementation and decide the same cases the same way. It reads only what those methods
 * read: the SDK span's ``_kind``, ``_context`` and ``_attributes._dict``, and the agent's and
 * the processor's attributes. Anything unexpected (another span class, an attribute of another
 * type, an error) goes to the Python methods, never raises from here.
 *
 * A SERVER span started where a runcov middleware or framework hook claimed the request for
 * the same agent (``runcov.middleware._claimed``, read with PyContextVar_Get, for SERVER spans
 * only) is that layer's to measure and count: the gate takes the claim at the span's start
 * and notes the span in ``_in_flight`` (``claimed_mark``), and forgets it at its end, with
 * nothing else done, wherever the span ends. */
typedef struct {
    PyObject_HEAD
    PyObject *processor;      /* RuncovSpanProcessor */
    PyObject *agent;          /* its Agent */
    PyObject *start_fallback; /* the processor's Python on_start(span, parent_context=None) */
    PyObject *end_fallback;   /* the processor's Python on_end(span) */
    PyObject *server, *consumer; /* the SpanKind members measured */
    PyObject *default_state;  /* the API's DEFAULT_TRACE_STATE */
    PyObject *claimed;        /* the ContextVar of a request's claim, or NULL: no claims */
    PyObject *claimed_mark;   /* what ``_in_flight`` holds for a claimed request's span */
} SpanGate;

static PyObject *name_running, *name_kind, *name_context, *name_span_threshold, *name_in_flight,
    *name_census_by_span, *name_attributes, *name_dict, *name_count_seen, *name_tally_local,
    *name_counts, *name_span_agent, *key_ot_entry, *key_method, *key_old_method, *key_route,
    *one;

/* The low 56 bits of a trace id: the randomness the sampling threshold is compared with. */
#define RANDOMNESS_MASK ((1ULL << 56) - 1)

static int
SpanGate_init(SpanGate *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"processor", "agent",         "start_fallback", "end_fallback",
                             "server",    "consumer",      "default_state",  "claimed",
                             "claimed_mark", NULL};
    PyObject *processor, *agent, *start, *end, *server, *consumer, *state;
    PyObject *claimed = Py_None, *mark = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOOO|OO", kwlist, &processor, &agent,
                                     &start, &end, &server, &consumer, &state, &claimed,
                                     &mark)) {
        return -1;
    }
    if (claimed != Py_None && !PyContextVar_CheckExact(claimed)) {
        PyErr_SetString(PyExc_TypeError, "SpanGate: claimed must be a ContextVar or None");
        return -1;
    }
    if (claimed != Py_None) {
        hold(&self->claimed, claimed);
        hold(&self->claimed_mark, mark);
    }
    hold(&self->processor, processor);
    hold(&self->agent, agent);
    hold(&self->start_fallback, start);
    hold(&self->end_fallback, end);
    hold(&self->server, server);
    hold(&self->consumer, consumer);
    hold(&self->default_state, state);
    return 0;
}

/* 1: ``kind`` is measured (SERVER or CONSUMER); 0: another SpanKind member; -1: not a SpanKind
 * (the Python methods decide). */
static int
measured_kind(SpanGate *self, PyObject *kind)
{
    if (kind == self->server || kind == self->consumer) {
        return 1;
    }
    return Py_TYPE(kind) == Py_TYPE(self->server) ? 0 : -1;
}

/* Whether ``obj.name`` is true; -1 on error. */
static int
attr_true(PyObject *obj, PyObject *name)
{
    PyObject *value = PyObject_GetAttr(obj, name);
    if (value == NULL) {
        return -1;
    }
    int truth = PyObject_IsTrue(value);
    Py_DECREF(value);
    return truth;
}

/* 1 when ``span``, a SERVER span, starts in a request that a runcov middleware or framework
 * hook claimed for this gate's agent (the claim's ``span_agent`` is the agent): the claim is
 * taken (``span_agent`` set to None: a claim accounts for one server span, the request's own)
 * and the span noted in ``_in_flight``, for on_end. 0: no claim (the common case: the context
 * variable holds None), or another agent's, or one already taken or released. -1: an error
 * (the Python on_start decides). */
static int
take_claim(SpanGate *self, PyObject *span)
{
    PyObject *claim = NULL, *owner = NULL, *ctx = NULL, *in_flight = NULL;
    if (PyContextVar_Get(self->claimed, NULL, &claim) < 0) {
        return -1;
    }
    if (claim == NULL || claim == Py_None) {
        Py_XDECREF(claim);
        return 0;
    }
    int taken = -1;
    owner = PyObject_GetAttr(claim, name_span_agent);
    if (owner == NULL) {
        goto done;
    }
    if (owner != self->agent) {
        taken = 0;
        goto done;
    }
    /* A SpanContext is a tuple (trace_id, span_id, is_remote, flags, trace_state, valid). */
    ctx = PyObject_GetAttr(span, name_context);
    if (ctx == NULL || !PyTuple_Check(ctx) || PyTuple_GET_SIZE(ctx) < 6) {
        goto done;
    }
    in_flight = PyObject_GetAttr(self->processor, name_in_flight);
    if (in_flight == NULL || !PyDict_CheckExact(in_flight) ||
        PyObject_SetAttr(claim, name_span_agent, Py_None) < 0) {
        goto done;
    }
    if (PyDict_SetItem(in_flight, PyTuple_GET_ITEM(ctx, 1), self->claimed_mark) == 0) {
        taken = 1;
    }
done:
    Py_DECREF(claim);
    Py_XDECREF(owner);
    Py_XDECREF(ctx);
    Py_XDECREF(in_flight);
    return taken;
}

/* 1 when on_start has nothing to do for ``span``: the span is not a request span, the agent
 * is stopped, it is the server span of a request a runcov middleware or hook claimed, or its
 * trace cannot be sampled (below the threshold, no ``ot`` tracestate that
 * could decide otherwise). 0: the Python on_start decides. The kind is read first: most spans
 * (a framework's internal ones) are decided by it alone. */
static int
start_decided(SpanGate *self, PyObject *span)
{
    int decided = 0;
    PyObject *kind = NULL, *ctx = NULL, *threshold = NULL;
    kind = PyObject_GetAttr(span, name_kind);
    if (kind == NULL) {
        goto done;
    }
    int measured = measured_kind(self, kind);
    if (measured <= 0) {
        decided = measured == 0;
        goto done;
    }
    int running = attr_true(self->agent, name_running);
    if (running <= 0) {
        decided = running == 0;
        goto done;
    }
    if (kind == self->server && self->claimed != NULL) {
        int claimed = take_claim(self, span);
        if (claimed != 0) {
            decided = claimed == 1;
            goto done;
        }
    }
    ctx = PyObject_GetAttr(span, name_context);
    /* A SpanContext is a tuple (trace_id, span_id, is_remote, flags, trace_state, valid). */
    if (ctx == NULL || !PyTuple_Check(ctx) || PyTuple_GET_SIZE(ctx) < 6 ||
        !PyLong_CheckExact(PyTuple_GET_ITEM(ctx, 0))) {
        goto done;
    }
    unsigned long long randomness = PyLong_AsUnsignedLongLongMask(PyTuple_GET_ITEM(ctx, 0));
    if (randomness == (unsigned long long)-1 && PyErr_Occurred()) {
        goto done;
    }
    threshold = PyObject_GetAttr(self->agent, name_span_threshold);
    if (threshold == NULL || !PyLong_CheckExact(threshold)) {
        goto done;
    }
    unsigned long long limit = PyLong_AsUnsignedLongLong(threshold);
    if (limit == (unsigned long long)-1 && PyErr_Occurred()) {
        goto done;
    }
    if ((randomness & RANDOMNESS_MASK) < limit) {
        /* Unless the tracestate's ``ot`` entry could decide otherwise. */
        PyObject *state = PyTuple_GET_ITEM(ctx, 4);
        if (state == self->default_state || state == Py_None) {
            decided = 1;
        }
        else {
            Py_ssize_t entries = PyObject_Size(state);
            decided = entries == 0 ||
                      (entries > 0 && PySequence_Contains(state, key_ot_entry) == 0);
        }
    }
done:
    if (!decided) {
        PyErr_Clear();
    }
    Py_XDECREF(kind);
    Py_XDECREF(ctx);
    Py_XDECREF(threshold);
    return decided;
}

/* An HTTP method attribute usable as is: a non-empty str. */
static int
plain_text(PyObject *value)
{
    return value != NULL && PyUnicode_CheckExact(value) && PyUnicode_GET_LENGTH(value) > 0;
}

/* 1 when ``span`` is the server span of a claimed request (noted in ``in_flight``, non-empty,
 * by take_claim): forgotten, and nothing else to do. 0 otherwise, or on an error. */
static int
forget_claimed(SpanGate *self, PyObject *span, PyObject *in_flight)
{
    int forgotten = 0;
    PyObject *ctx = PyObject_GetAttr(span, name_context);
    if (ctx != NULL && PyTuple_Check(ctx) && PyTuple_GET_SIZE(ctx) >= 6) {
        PyObject *span_id = PyTuple_GET_ITEM(ctx, 1);
        PyObject *mark = PyDict_GetItemWithError(in_flight, span_id);
        forgotten = mark != NULL && mark == self->claimed_mark &&
                    PyDict_DelItem(in_flight, span_id) == 0;
    }
    Py_XDECREF(ctx);
    return forgotten;
}

/* 1 when on_end has nothing to do for ``span`` beyond what this did: the span is not a request
 * span, it is the server span of a claimed request, or it is an HTTP request span of no
 * sampled request while census does not go by span, and its request was counted as seen.
 * 0: the Python on_end does all of it. */
static int
end_decided(SpanGate *self, PyObject *span)
{
    int decided = 0;
    PyObject *kind = NULL, *in_flight = NULL, *holder = NULL, *attrs = NULL, *key = NULL;
    PyObject *local = NULL, *counts = NULL, *more = NULL;
    kind = PyObject_GetAttr(span, name_kind);
    if (kind == NULL) {
        goto done;
    }
    int measured = measured_kind(self, kind);
    if (measured <= 0) {
        decided = measured == 0;
        goto done;
    }
    /* A sampled span in flight (this one, perhaps) or census by span: Python. A claimed
     * request's server span is forgotten here. */
    in_flight = PyObject_GetAttr(self->processor, name_in_flight);
    if (in_flight == NULL || !PyDict_CheckExact(in_flight)) {
        goto done;
    }
    if (PyDict_GET_SIZE(in_flight) != 0) {
        if (kind == self->server && self->claimed_mark != NULL) {
            decided = forget_claimed(self, span, in_flight);
        }
        goto done;
    }
    if (attr_true(self->agent, name_census_by_span) != 0) {
        goto done;
    }
    holder = PyObject_GetAttr(span, name_attributes);
    attrs = holder == NULL ? NULL : PyObject_GetAttr(holder, name_dict);
    if (attrs == NULL || !PyDict_CheckExact(attrs)) {
        goto done;
    }
    /* request_identity(): (method, route) of an HTTP span with a plain method and a route that
     * is missing or already starts with "/"; any other case is Python's. */
    PyObject *method = PyDict_GetItemWithError(attrs, key_method);
    if (method == NULL && !PyErr_Occurred()) {
        method = PyDict_GetItemWithError(attrs, key_old_method);
    }
    if (!plain_text(method)) {
        goto done;
    }
    PyObject *route = PyDict_GetItemWithError(attrs, key_route);
    if (route == NULL) {
        if (PyErr_Occurred()) {
            goto done;
        }
        route = Py_None;
    }
    else if (!plain_text(route) || PyUnicode_READ_CHAR(route, 0) != '/') {
        goto done;
    }
    /* Agent.seen(method, route): one more in the calling thread's count of an endpoint it has
     * counted before (a new one, and the bound on their number, are Python's). */
    int counting = attr_true(self->agent, name_count_seen);
    if (counting <= 0) {
        decided = counting == 0;
        goto done;
    }
    local = PyObject_GetAttr(self->agent, name_tally_local);
    counts = local == NULL ? NULL : PyObject_GetAttr(local, name_counts);
    if (counts == NULL || !PyDict_CheckExact(counts)) {
        goto done;
    }
    key = PyTuple_Pack(2, method, route);
    if (key == NULL) {
        goto done;
    }
    PyObject *seen = PyDict_GetItemWithError(counts, key);
    if (seen == NULL || !PyLong_CheckExact(seen)) {
        goto done;
    }
    more = PyNumber_Add(seen, one);
    decided = more != NULL && PyDict_SetItem(counts, key, more) == 0;
done:
    if (!decided) {
        PyErr_Clear();
    }
    Py_XDECREF(kind);
    Py_XDECREF(in_flight);
    Py_XDECREF(holder);
    Py_XDECREF(attrs);
    Py_XDECREF(local);
    Py_XDECREF(counts);
    Py_XDECREF(key);
    Py_XDECREF(more);
    return decided;
}

static PyObject *
SpanGate_on_start(SpanGate *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (self->start_fallback == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "SpanGate used before __init__");
        return NULL;
    }
    if (nargs >= 1 && start_decided(self, args[0])) {
        Py_RETURN_NONE;
    }
    return PyObject_Vectorcall(self->start_fallback, args, nargs, kwnames);
}

static PyObject *
SpanGate_on_end(SpanGate *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (self->end_fallback == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "SpanGate used before __init__");
        return NULL;
    }
    if (nargs == 1 && kwnames == NULL && end_decided(self, args[0])) {
        Py_RETURN_NONE;
    }
    return PyObject_Vectorcall(self->end_fallback, args, nargs, kwnames);
}

static PyObject *
SpanGate_on_ending(SpanGate *self, PyObject *span)
{
    Py_RETURN_NONE;
}

static int
SpanGate_traverse(SpanGate *self, visitproc visit, void *arg)
{
    Py_VISIT(self->processor);
    Py_VISIT(self->agent);
    Py_VISIT(self->start_fallback);
    Py_VISIT(self->end_fallback);
    Py_VISIT(self->server);
    Py_VISIT(self->consumer);
    Py_VISIT(self->default_state);
    Py_VISIT(self->claimed);
    Py_VISIT(self->claimed_mark);
    return 0;
}

static int
SpanGate_clear(SpanGate *self)
{
    Py_CLEAR(self->processor);
    Py_CLEAR(self->agent);
    Py_CLEAR(self->start_fallback);
    Py_CLEAR(self->end_fallback);
    Py_CLEAR(self->server);
    Py_CLEAR(self->consumer);
    Py_CLEAR(self->default_state);
    Py_CLEAR(self->claimed);
    Py_CLEAR(self->claimed_mark);
    return 0;
}

static void
SpanGate_dealloc(SpanGate *self)
{
    PyObject_GC_UnTrack(self);
    SpanGate_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef SpanGate_methods[] = {
    {"on_start", (PyCFunction)(void (*)(void))SpanGate_on_start, METH_FASTCALL | METH_KEYWORDS,
     "on_start(span, parent_context=None): the processor's on_start."},
    {"on_end", (PyCFunction)(void (*)(void))SpanGate_on_end, METH_FASTCALL | METH_KEYWORDS,
     "on_end(span): the processor's on_end."},
    {"on_ending", (PyCFunction)SpanGate_on_ending, METH_O,
     "on_ending(span): nothing (the SDK's hook before a span ends)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SpanGateType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "runcov.tracing._accel.SpanGate",
    .tp_basicsize = sizeof(SpanGate),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "SpanGate(processor, agent, start_fallback, end_fallback, server, consumer, "
              "default_state, claimed=None, claimed_mark=None): the span processor's "
              "per-request path.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)SpanGate_init,
    .tp_dealloc = (destructor)SpanGate_dealloc,
    .tp_traverse = (traverseproc)SpanGate_traverse,
    .tp_clear = (inquiry)SpanGate_clear,
    .tp_methods = SpanGate_methods,
};

static int
intern_names(void)
{
    name_call = PyUnicode_InternFromString("call");
    name_exception = PyUnicode_InternFromString("exception");
    name_line = PyUnicode_InternFromString("line");
    name_return = PyUnicode_InternFromString("return");
    name_opcode = PyUnicode_InternFromString("opcode");
    name_f_trace = PyUnicode_InternFromString("f_trace");
    name_running = PyUnicode_InternFromString("running");
    name_kind = PyUnicode_InternFromString("_kind");
    name_context = PyUnicode_InternFromString("_context");
    name_span_threshold = PyUnicode_InternFromString("_span_threshold");
    name_in_flight = PyUnicode_InternFromString("_in_flight");
    name_span_agent = PyUnicode_InternFromString("span_agent");
    name_census_by_span = PyUnicode_InternFromString("census_by_span");
    name_attributes = PyUnicode_InternFromString("_attributes");
    name_dict = PyUnicode_InternFromString("_dict");
    name_count_seen = PyUnicode_InternFromString("_count_seen");
    name_tally_local = PyUnicode_InternFromString("_tally_local");
    name_counts = PyUnicode_InternFromString("counts");
    key_ot_entry = PyUnicode_InternFromString("ot");
    key_method = PyUnicode_InternFromString("http.request.method");
    key_old_method = PyUnicode_InternFromString("http.method");
    key_route = PyUnicode_InternFromString("http.route");
    one = PyLong_FromLong(1);
    zero = PyLong_FromLong(0);
    name_acquire = PyUnicode_InternFromString("acquire");
    name_release = PyUnicode_InternFromString("release");
    return (name_call && name_exception && name_line && name_return && name_opcode &&
            name_f_trace && name_running && name_kind && name_context && name_span_threshold &&
            name_in_flight && name_span_agent && name_census_by_span && name_attributes &&
            name_dict && name_count_seen && name_tally_local && name_counts && key_ot_entry &&
            key_method && key_old_method && key_route && one && zero && name_acquire &&
            name_release) ? 0 : -1;
}


#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
/* Quiet(fn): a callable that calls ``fn`` with the thread's tracing and profiling suspended
 * (as CPython does while it runs a trace function), and returns None. The census probes call
 * it from the code they are in: being a C object, the call itself raises no trace or profile
 * event, and nothing ``fn`` runs does either, so a tracer or profiler of the application never
 * sees runcov's probes. An exception from ``fn`` is dropped unless it is not an Exception
 * (KeyboardInterrupt, SystemExit), which goes on. */
typedef struct {
    PyObject_HEAD
    PyObject *fn;
    vectorcallfunc vectorcall;
} Quiet;

static PyObject *
Quiet_vectorcall(Quiet *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    PyThreadState *tstate = PyThreadState_Get();
    PyThreadState_EnterTracing(tstate);
    PyObject *result = PyObject_Vectorcall(self->fn, args, nargsf, kwnames);
    PyThreadState_LeaveTracing(tstate);
    if (result == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            return NULL;
        }
        PyErr_Clear();
    }
    else {
        Py_DECREF(result);
    }
    Py_RETURN_NONE;
}

static PyObject *
Quiet_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *fn;
    if (!PyArg_ParseTuple(args, "O:Quiet", &fn)) {
        return NULL;
    }
    Quiet *self = (Quiet *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    Py_INCREF(fn);
    self->fn = fn;
    self->vectorcall = (vectorcallfunc)Quiet_vectorcall;
    return (PyObject *)self;
}

static int
Quiet_traverse(Quiet *self, visitproc visit, void *arg)
{
    Py_VISIT(self->fn);
    return 0;
}

static int
Quiet_clear(Quiet *self)
{
    Py_CLEAR(self->fn);
    return 0;
}

static void
Quiet_dealloc(Quiet *self)
{
    PyObject_GC_UnTrack(self);
    Quiet_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* What a probe's callable pickles as: ``functools.partial(id)``, a callable that takes the key
 * and does nothing. Code objects hold the probes' callable among their constants, and tools
 * that copy functions by value (cloudpickle, for a script's functions) pickle the constants:
 * the copy runs in another process, with nothing to record into. */
static PyObject *
probe_reduce(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *functools = PyImport_ImportModule("functools");
    PyObject *partial = functools ? PyObject_GetAttrString(functools, "partial") : NULL;
    PyObject *builtins = partial ? PyEval_GetBuiltins() : NULL; /* borrowed */
    PyObject *id = builtins ? PyDict_GetItemString(builtins, "id") : NULL; /* borrowed */
    PyObject *result = id ? Py_BuildValue("(O(O))", partial, id) : NULL;
    if (id == NULL && !PyErr_Occurred()) {
        PyErr_SetString(PyExc_TypeError, "cannot pickle a runcov probe");
    }
    Py_XDECREF(functools);
    Py_XDECREF(partial);
    return result;
}

static PyMethodDef Quiet_methods[] = {
    {"__reduce__", (PyCFunction)probe_reduce, METH_NOARGS, "Pickles as a no-op callable."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject QuietType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "runcov.tracing._accel.Quiet",
    .tp_basicsize = sizeof(Quiet),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Quiet(fn): calls fn with tracing and profiling suspended; returns None.",
    .tp_vectorcall_offset = offsetof(Quiet, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = Quiet_new,
    .tp_methods = Quiet_methods,
    .tp_dealloc = (destructor)Quiet_dealloc,
    .tp_traverse = (traverseproc)Quiet_traverse,
    .tp_clear = (inquiry)Quiet_clear,
};
#endif

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
/* set_unit(code, index, unit): write the two bytes ``unit`` (an opcode and its argument, as in
 * ``co_code``) over code unit ``index`` of the bytecode that ``code`` runs (3.11: the code
 * object's own adaptive copy, which every frame of it executes). The census probes use it to
 * turn a probe's head into a jump over the probe once its line was hit, and back at a new epoch.
 * Only the probe heads that runcov wrote are ever passed here; the GIL makes the write atomic
 * for every thread. */
static PyObject *
set_unit(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyCode_Check(args[0]) || !PyBytes_Check(args[2]) ||
        PyBytes_GET_SIZE(args[2]) != 2) {
        PyErr_SetString(PyExc_TypeError, "set_unit(code, index, unit: 2 bytes)");
        return NULL;
    }
    PyCodeObject *code = (PyCodeObject *)args[0];
    Py_ssize_t index = PyLong_AsSsize_t(args[1]);
    if (index == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (index < 0 || index >= Py_SIZE(code)) {
        PyErr_SetString(PyExc_IndexError, "set_unit: index outside the code");
        return NULL;
    }
    memcpy((char *)_PyCode_CODE(code) + index * sizeof(_Py_CODEUNIT),
           PyBytes_AS_STRING(args[2]), sizeof(_Py_CODEUNIT));
    Py_RETURN_NONE;
}
#endif

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
/* ExactProbes(var, scope_type, table, census): what the exact-mode probes of CPython 3.11 call
 * (probes.py places them; settrace.py arms them while exact scopes are open). A probe passes
 * its key, an index into ``table``, whose entry is (kind, co_filename, line, co_firstlineno,
 * generator-like: 1, or 2 for a LINE probe at an exception handler of such code). Kinds:
 *
 *   LINE    at each instruction where a line tracer could see a line event: the arc
 *           (previous line, line) when the line differs from the frame's previous one, or a
 *           backward jump (BACK) led here;
 *   ENTRY   after a frame's first RESUME: the frame starts, its previous line -co_firstlineno;
 *   RESUME  after the RESUME that follows a plain yield: the generator resumes at its line;
 *   EXIT    before RETURN_VALUE: the arc (previous line, -co_firstlineno);
 *   BACK    before a backward jump to the same line.
 *
 * These are the events coverage.py's tracer turns into arcs (a call, a line, a return that is
 * not a yield), recorded the same way: into the current exact scope's ``files[co_filename]``.
 * Each thread keeps a stack of the frames entered inside exact scopes (the interpreter frame's
 * address, its previous line, its file's arc set and scope). A frame left without an EXIT
 * probe stays on it until a probe of a frame below it, a frame starting at the same address,
 * or the end of its scope finds it: a generator or coroutine suspended at a yield or await
 * then moves to the thread's list of suspended frames, from which its next probe takes it
 * back (its previous line is the yield's, as a tracer's resumption has it: so no probe is
 * needed after an await's RESUME, where one would take a pending signal the interpreter
 * leaves to the awaited generator); any other frame was left by an exception and records its
 * exit arc, as coverage.py's tracer does at such a return event. A generator is followed by a
 * weak reference (never kept alive longer than the application keeps it): when it is
 * released, the entry is settled then (an exit arc if an exception raised in its body ended
 * it; none when it was thrown in at a yield, or the generator was suspended). A throw() runs
 * no RESUME: a handler's first LINE probe that finds the exception it handles entered the
 * frame at a YIELD_VALUE starts the frame again there, as a tracer's call event does (parked
 * or not: see probe_thrown_at_yield). Outside exact scopes a LINE probe goes to ``census``
 * while census is on; the others return at once.
 * Nothing here runs Python code or raises: a tracer or profiler of the application sees no
 * probe. */
#define Py_BUILD_CORE 1
#include "internal/pycore_frame.h"
#undef Py_BUILD_CORE

enum { PROBE_LINE, PROBE_ENTRY, PROBE_RESUME, PROBE_EXIT, PROBE_BACK };
/* The table's last field: 0 ordinary code, 1 generator-like code, 2 a LINE probe of
 * generator-like code at an exception handler. */
enum { PROBE_PLAIN, PROBE_GENERATOR, PROBE_AT_HANDLER };

typedef struct {
    _PyInterpreterFrame *frame;
    PyObject *arcs;   /* the scope's set of arcs for the frame's file */
    PyObject *scope;  /* the exact scope the frame runs in */
    PyGenObject *gen; /* the generator-like object owning the frame (borrowed), or NULL */
    PyObject *wref;   /* a weak reference to it whose callback settles the entry */
    long last;
    long first;
    int force; /* a backward jump: the next LINE probe is an event even on the same line */
    /* The exception thrown in at a yield whose handlers the frame runs, and the traceback
     * entry the throw() added, once a handler's probe started the frame again for it (so
     * that a later handler of the same exception does not): compared, never dereferenced,
     * and forgotten at the first probe where the frame no longer handles it. */
    void *thrown_exc, *thrown_tb;
} ProbeFrame;

typedef struct {
    ProbeFrame *frames;
    Py_ssize_t depth, cap;
} ProbeStack;

/* This thread's running frames, and its suspended generators and coroutines. */
static _Thread_local ProbeStack probe_stack, probe_parked;
/* Nonzero while this thread is inside ExactProbes: code that an allocation or a release runs
 * meanwhile (a finalizer, a garbage-collection callback) records nothing, and never moves the
 * stacks under the call that runs it. */
static _Thread_local int probe_busy;

/* Deeper than this, frames are not followed (their events are lost, never misattributed). */
#define PROBE_STACK_MAX 4096

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *var;
    PyTypeObject *scope_type;
    Py_ssize_t off_is_census, off_files, off_closed;
    PyObject *table;
    PyObject *census;
    PyObject *on_gone; /* the weak references' callback (bound to this object) */
    /* Per probe, the arc set and the previous line of the last arc it added: the same arc
     * into the same set again is skipped (the set is held, so it is never another one at the
     * same address). */
    PyObject **cache_set;
    long *cache_from;
    Py_ssize_t cache_len;
} ExactProbes;

static void probe_arc(PyObject *arcs, long from, long to);

/* Add (from, to) to ``arcs`` for probe ``key``, unless it is the arc this probe added last. */
static void
probe_arc_cached(ExactProbes *self, Py_ssize_t key, PyObject *arcs, long from, long to)
{
    if (key >= self->cache_len) {
        Py_ssize_t len = PyList_GET_SIZE(self->table);
        PyObject **sets = PyMem_Realloc(self->cache_set, len * sizeof(PyObject *));
        if (sets == NULL) {
            probe_arc(arcs, from, to);
            return;
        }
        self->cache_set = sets;
        long *froms = PyMem_Realloc(self->cache_from, len * sizeof(long));
        if (froms == NULL) {
            probe_arc(arcs, from, to);
            return;
        }
        self->cache_from = froms;
        for (Py_ssize_t i = self->cache_len; i < len; i++) {
            sets[i] = NULL;
            froms[i] = 0;
        }
        self->cache_len = len;
    }
    if (self->cache_set[key] == arcs && self->cache_from[key] == from) {
        return;
    }
    probe_arc(arcs, from, to);
    Py_INCREF(arcs);
    Py_XSETREF(self->cache_set[key], arcs);
    self->cache_from[key] = from;
}

static void
probe_arc(PyObject *arcs, long from, long to)
{
    PyObject *a = PyLong_FromLong(from);
    PyObject *b = a != NULL ? PyLong_FromLong(to) : NULL;
    PyObject *arc = b != NULL ? PyTuple_Pack(2, a, b) : NULL;
    Py_XDECREF(a);
    Py_XDECREF(b);
    if (arc == NULL || PySet_Add(arcs, arc) < 0) {
        PyErr_Clear();
    }
    Py_XDECREF(arc);
}

/* Whether a generator that has finished was ended by an exception raised in its body (not at
 * a yield, where one thrown in leaves no exit arc). */
static int
probe_gen_raised(PyGenObject *gen)
{
    _PyInterpreterFrame *frame = (_PyInterpreterFrame *)gen->gi_iframe;
    return frame->prev_instr != NULL && _Py_OPCODE(*frame->prev_instr) != YIELD_VALUE;
}

/* The exception the running frame handles (``tstate``'s, set by the handler's PUSH_EXC_INFO,
 * which comes before the handler's first probe), or NULL; ``*tb``: its traceback's first
 * entry. */
static PyObject *
probe_handled(PyThreadState *tstate, PyObject **tb)
{
    PyObject *exc = tstate->exc_info != NULL ? tstate->exc_info->exc_value : NULL;
    if (exc == NULL || !PyExceptionInstance_Check(exc)) {
        return NULL;
    }
    *tb = ((PyBaseExceptionObject *)exc)->traceback;
    return exc;
}

/* Whether the exception that ``frame`` (generator-like, at a handler's first probe) handles
 * was thrown in at one of its yields (throw(), close(), athrow(), aclose(), a task's
 * cancellation) and entered the frame there: the traceback entry the interpreter added as
 * the exception entered the frame is the frame's, at a YIELD_VALUE (where nothing else
 * raises). That is the instruction coverage.py's tracer reads at the call event of such a
 * throw(): with argument 0 (always, on 3.11), a frame's start. A throw() at a ``yield from``
 * or ``await`` goes to the awaited object first; when that raises, the frame enters past the
 * loop around the SEND (read as a resumption); a close(), or an awaited object that cannot
 * take a throw(), enters it at the YIELD_VALUE. Whether the frame was parked meanwhile or
 * stayed on the running stack (its scope unbound while it was suspended: no probe of a frame
 * below it ran in that scope) does not matter. ``*exc``/``*tb``: what identifies the throw. */
static int
probe_thrown_at_yield(PyThreadState *tstate, _PyInterpreterFrame *frame, void **exc, void **tb)
{
    PyObject *head = NULL;
    PyObject *handled = probe_handled(tstate, &head);
    if (handled == NULL || head == NULL || !PyTraceBack_Check(head)) {
        return 0;
    }
    PyTracebackObject *entry = (PyTracebackObject *)head;
    if (entry->tb_frame == NULL || entry->tb_frame->f_frame != frame) {
        return 0;
    }
    Py_ssize_t unit = entry->tb_lasti / (int)sizeof(_Py_CODEUNIT);
    if (entry->tb_lasti < 0 || unit >= Py_SIZE(frame->f_code) ||
        _Py_OPCODE(_PyCode_CODE(frame->f_code)[unit]) != YIELD_VALUE) {
        return 0;
    }
    *exc = handled;
    *tb = head;
    return 1;
}

/* Forget the throw() ``f`` was started again for once the frame no longer handles its
 * exception (its handlers are done: the same addresses may come back with another one). */
static void
probe_thrown_done(PyThreadState *tstate, ProbeFrame *f)
{
    if (f->thrown_exc == NULL) {
        return;
    }
    PyObject *tb = NULL;
    PyObject *exc = probe_handled(tstate, &tb);
    if ((void *)exc != f->thrown_exc || (void *)tb != f->thrown_tb) {
        f->thrown_exc = f->thrown_tb = NULL;
    }
}

static int
probe_scope_open(ExactProbes *self, PyObject *scope)
{
    return SLOT(scope, self->off_closed) == Py_False;
}

/* Forget an entry (its references). */
static void
probe_release(ProbeFrame *f)
{
    Py_CLEAR(f->arcs);
    Py_CLEAR(f->scope);
    Py_CLEAR(f->wref);
    f->gen = NULL;
}

static int
probe_reserve(ProbeStack *s)
{
    if (s->depth >= PROBE_STACK_MAX) {
        return -1;
    }
    if (s->depth == s->cap) {
        Py_ssize_t cap = s->cap ? 2 * s->cap : 32;
        ProbeFrame *grown = PyMem_RawRealloc(s->frames, cap * sizeof(ProbeFrame));
        if (grown == NULL) {
            return -1;
        }
        s->frames = grown;
        s->cap = cap;
    }
    return 0;
}

static void
probe_remove(ProbeStack *s, Py_ssize_t i)
{
    memmove(&s->frames[i], &s->frames[i + 1], (s->depth - i - 1) * sizeof(ProbeFrame));
    s->depth--;
}

/* The index of ``frame`` in ``s`` (from the top), or -1. */
static Py_ssize_t
probe_find(ProbeStack *s, _PyInterpreterFrame *frame)
{
    for (Py_ssize_t i = s->depth - 1; i >= 0; i--) {
        if (s->frames[i].frame == frame) {
            return i;
        }
    }
    return -1;
}

/* An entry found above the running frame (or at a new frame's address): a suspended
 * generator is parked, a finished one or any other frame was left by an exception. */
static void
probe_settle(ExactProbes *self, ProbeFrame *f)
{
    if (f->gen != NULL) {
        if (f->wref == NULL || PyWeakref_GET_OBJECT(f->wref) == Py_None) {
            probe_release(f); /* (released: its callback settled it) */
            return;
        }
        int8_t state = f->gen->gi_frame_state;
        if (state < FRAME_EXECUTING && probe_reserve(&probe_parked) == 0) {
            probe_parked.frames[probe_parked.depth++] = *f; /* suspended: parked */
            return;
        }
        if (state > FRAME_EXECUTING && probe_gen_raised(f->gen) &&
            probe_scope_open(self, f->scope)) {
            probe_arc(f->arcs, f->last, -f->first);
        }
        probe_release(f);
        return;
    }
    if (probe_scope_open(self, f->scope)) {
        probe_arc(f->arcs, f->last, -f->first);
    }
    probe_release(f);
}

/* Settle the entries above index ``i`` of the running stack. */
static void
probe_unwind_to(ExactProbes *self, Py_ssize_t i)
{
    ProbeStack *s = &probe_stack;
    while (s->depth - 1 > i) {
        ProbeFrame gone = s->frames[--s->depth];
        probe_settle(self, &gone);
    }
}

/* Push a new entry for ``frame`` (a start, or a generator resumed after a plain yield).
 * ``follow``: a generator's frame is followed by a weak reference to it (its start or a
 * resumption, never a frame that a throw() entered: that may be the generator's close as it
 * is released, after its weak references were cleared, when one made would outlive it; such
 * a frame is followed as any other, which can only return or be left by an exception). */
static ProbeFrame *
probe_push(ExactProbes *self, _PyInterpreterFrame *frame, PyObject *scope, PyObject *rec,
           long last, int follow)
{
    PyObject *filename = PyTuple_GET_ITEM(rec, 1);
    long first = PyLong_AsLong(PyTuple_GET_ITEM(rec, 3));
    int is_gen = PyLong_AsLong(PyTuple_GET_ITEM(rec, 4)) != PROBE_PLAIN;
    ProbeStack *s = &probe_stack;
    Py_ssize_t old = probe_find(s, frame);
    if (old >= 0) {
        /* the same address: a generator resuming, or a new frame where one left by an
         * exception was */
        ProbeFrame gone = s->frames[old];
        probe_remove(s, old);
        if (gone.gen != NULL) {
            probe_release(&gone);
        }
        else {
            probe_settle(self, &gone);
        }
    }
    old = probe_find(&probe_parked, frame);
    if (old >= 0) {
        ProbeFrame gone = probe_parked.frames[old];
        probe_remove(&probe_parked, old);
        probe_release(&gone);
    }
    PyObject *files = SLOT(scope, self->off_files);
    if (files == NULL || !PyDict_Check(files) || probe_reserve(s) < 0) {
        return NULL;
    }
    PyObject *arcs = set_in(files, filename);
    if (arcs == NULL) {
        PyErr_Clear();
        return NULL;
    }
    ProbeFrame *f = &s->frames[s->depth++];
    f->frame = frame;
    Py_INCREF(arcs);
    f->arcs = arcs;
    Py_INCREF(scope);
    f->scope = scope;
    f->gen = NULL;
    f->wref = NULL;
    if (is_gen && follow && frame->owner == FRAME_OWNED_BY_GENERATOR) {
        PyGenObject *gen = (PyGenObject *)((char *)frame - offsetof(PyGenObject, gi_iframe));
        f->wref = PyWeakref_NewRef((PyObject *)gen, self->on_gone);
        if (f->wref == NULL) {
            PyErr_Clear();
        }
        else {
            f->gen = gen;
        }
    }
    f->last = last;
    f->first = first;
    f->force = 0;
    f->thrown_exc = f->thrown_tb = NULL;
    return f;
}

/* The entry of the running frame (settling those above it, taking it back from the parked
 * ones), or NULL. */
static ProbeFrame *
probe_top(ExactProbes *self, _PyInterpreterFrame *frame)
{
    ProbeStack *s = &probe_stack;
    if (s->depth > 0 && s->frames[s->depth - 1].frame == frame) {
        return &s->frames[s->depth - 1];
    }
    Py_ssize_t i = probe_find(s, frame);
    if (i >= 0) {
        probe_unwind_to(self, i);
        return &s->frames[i];
    }
    if (frame->owner != FRAME_OWNED_BY_GENERATOR) {
        return NULL; /* a frame that started before any exact scope of this thread */
    }
    i = probe_find(&probe_parked, frame);
    if (i < 0) {
        return NULL;
    }
    ProbeFrame back = probe_parked.frames[i];
    probe_remove(&probe_parked, i);
    /* What ran since it was parked: the running entries above its nearest caller that has
     * one left (or suspended) meanwhile. A generator it drives, resumed before it and
     * suspended again (an async iterator awaiting inside an ``async for``), is still there
     * above that caller, and is parked now, not left on the stack below this frame, where
     * its next probe would settle this frame as gone. */
    Py_ssize_t caller = -1;
    for (_PyInterpreterFrame *p = frame->previous; p != NULL && caller < 0 && s->depth > 0;
         p = p->previous) {
        caller = probe_find(s, p);
    }
    probe_unwind_to(self, caller);
    if (probe_reserve(s) < 0) {
        probe_release(&back);
        return NULL;
    }
    s->frames[s->depth++] = back;
    return &s->frames[s->depth - 1];
}

static PyObject *
ExactProbes_vectorcall(ExactProbes *self, PyObject *const *args, size_t nargsf,
                       PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 1 || self->table == NULL) {
        Py_RETURN_NONE;
    }
    Py_ssize_t key = PyLong_AsSsize_t(args[0]);
    if (key < 0 || key >= PyList_GET_SIZE(self->table)) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    PyObject *rec = PyList_GET_ITEM(self->table, key);
    if (!PyTuple_Check(rec) || PyTuple_GET_SIZE(rec) != 5) {
        Py_RETURN_NONE;
    }
    long kind = PyLong_AsLong(PyTuple_GET_ITEM(rec, 0));
    PyObject *scope = NULL;
    if (PyContextVar_Get(self->var, Py_None, &scope) < 0) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    if (Py_TYPE(scope) != self->scope_type || SLOT(scope, self->off_is_census) != Py_False ||
        SLOT(scope, self->off_closed) != Py_False) {
        Py_DECREF(scope);
        if (kind == PROBE_LINE && self->census != NULL && self->census != Py_None) {
            /* census on (the Python side sets ``census`` only then) */
            PyObject *result = PyObject_Vectorcall(self->census, args, 1, NULL);
            if (result == NULL) {
                return NULL; /* only what Quiet lets through (KeyboardInterrupt) */
            }
            Py_DECREF(result);
        }
        Py_RETURN_NONE;
    }
    _PyInterpreterFrame *frame = PyThreadState_Get()->cframe->current_frame;
    if (frame == NULL || probe_busy) {
        Py_DECREF(scope);
        Py_RETURN_NONE;
    }
    probe_busy = 1;
    long line = PyLong_AsLong(PyTuple_GET_ITEM(rec, 2));
    ProbeFrame *f;
    switch (kind) {
    case PROBE_ENTRY:
        probe_push(self, frame, scope, rec, -PyLong_AsLong(PyTuple_GET_ITEM(rec, 3)), 1);
        break;
    case PROBE_RESUME:
        f = probe_top(self, frame);
        if (f == NULL) {
            /* a generator that started before the scope, resumed inside it */
            probe_push(self, frame, scope, rec, line, 1);
        }
        else {
            f->last = line;
            if (f->thrown_exc != NULL) {
                probe_thrown_done(PyThreadState_Get(), f);
            }
        }
        break;
    case PROBE_LINE: {
        f = probe_top(self, frame);
        int at_handler = PyLong_AsLong(PyTuple_GET_ITEM(rec, 4)) == PROBE_AT_HANDLER;
        void *exc = NULL, *tb = NULL;
        if (at_handler) {
            /* (a LINE probe at a handler is only ever generator-like code's) */
            probe_thrown_at_yield(PyThreadState_Get(), frame, &exc, &tb);
        }
        if (f == NULL && at_handler && frame->owner == FRAME_OWNED_BY_GENERATOR) {
            /* a generator resumed by throw() into one of its handlers, which runs no RESUME,
             * with no entry (released: a GC finalization; or started before the scope): a
             * tracer's call event there reads as a frame's start (the yield's argument is
             * 0) */
            f = probe_push(self, frame, scope, rec, -PyLong_AsLong(PyTuple_GET_ITEM(rec, 3)),
                           0);
            if (f != NULL) {
                f->thrown_exc = exc;
                f->thrown_tb = tb;
            }
        }
        else if (f != NULL && exc != NULL && (exc != f->thrown_exc || tb != f->thrown_tb)) {
            /* the same for a generator followed since before the throw(), parked or not;
             * once per throw() (an outer handler of the same exception, or a bare ``raise``
             * into one, is a line event there, as for a tracer) */
            f->last = -f->first;
            f->force = 0;
            f->thrown_exc = exc;
            f->thrown_tb = tb;
        }
        else if (f != NULL && f->thrown_exc != NULL) {
            probe_thrown_done(PyThreadState_Get(), f);
        }
        if (f != NULL && (line != f->last || f->force)) {
            probe_arc_cached(self, key, f->arcs, f->last, line);
            f->last = line;
            f->force = 0;
        }
        break;
    }
    case PROBE_BACK:
        f = probe_top(self, frame);
        if (f != NULL) {
            f->force = 1;
        }
        break;
    case PROBE_EXIT:
        f = probe_top(self, frame);
        if (f != NULL) {
            probe_arc_cached(self, key, f->arcs, f->last, -f->first);
            ProbeFrame gone = probe_stack.frames[--probe_stack.depth];
            probe_release(&gone);
        }
        break;
    }
    PyErr_Clear();
    probe_busy = 0;
    Py_DECREF(scope);
    Py_RETURN_NONE;
}

/* The weak references' callback: a followed generator is being released (its state still
 * readable). Settle its entry now. */
static PyObject *
ExactProbes_gone(ExactProbes *self, PyObject *wref)
{
    if (probe_busy) {
        Py_RETURN_NONE; /* released by runcov's own bookkeeping: settled without an arc */
    }
    probe_busy = 1;
    ProbeStack *stacks[2] = {&probe_stack, &probe_parked};
    for (int k = 0; k < 2; k++) {
        ProbeStack *s = stacks[k];
        for (Py_ssize_t i = s->depth - 1; i >= 0; i--) {
            if (s->frames[i].wref == wref) {
                ProbeFrame gone = s->frames[i];
                probe_remove(s, i);
                if (gone.gen->gi_frame_state > FRAME_EXECUTING && probe_gen_raised(gone.gen) &&
                    probe_scope_open(self, gone.scope)) {
                    probe_arc(gone.arcs, gone.last, -gone.first);
                }
                probe_release(&gone);
                probe_busy = 0;
                Py_RETURN_NONE;
            }
        }
    }
    probe_busy = 0;
    Py_RETURN_NONE;
}

/* Whether ``frame`` is running in this thread (the frame that closes a scope, or one below). */
static int
probe_frame_running(_PyInterpreterFrame *frame)
{
    for (_PyInterpreterFrame *f = PyThreadState_Get()->cframe->current_frame; f != NULL;
         f = f->previous) {
        if (f == frame) {
            return 1;
        }
    }
    return 0;
}

/* forget(scope): drop this thread's frames of ``scope`` (its end, or the end of work handed
 * to this thread in it), recording the exit arcs of those left by an exception (not of those
 * still running: what runs after the scope closes is not its); and the entries of generators
 * left on this thread by scopes already closed on another (suspended here, resumed there). */
static PyObject *
ExactProbes_forget(ExactProbes *self, PyObject *scope)
{
    if (probe_busy) {
        Py_RETURN_NONE;
    }
    probe_busy = 1;
    ProbeStack *s = &probe_stack;
    Py_ssize_t kept = 0;
    for (Py_ssize_t i = 0; i < s->depth; i++) {
        ProbeFrame f = s->frames[i];
        if (f.scope != scope) {
            if (!probe_scope_open(self, f.scope) && !probe_frame_running(f.frame)) {
                /* a generator of a scope that another thread closed, left here when it
                 * yielded (resumed and finished elsewhere): nothing more to record */
                probe_release(&f);
                continue;
            }
            s->frames[kept++] = f;
            continue;
        }
        int left;
        if (probe_frame_running(f.frame)) {
            left = 0;
        }
        else if (f.gen != NULL) {
            /* the scope is marked closed already, its records not yet taken */
            left = f.wref != NULL && PyWeakref_GET_OBJECT(f.wref) != Py_None &&
                   f.gen->gi_frame_state > FRAME_EXECUTING && probe_gen_raised(f.gen);
        }
        else {
            left = 1;
        }
        if (left) {
            probe_arc(f.arcs, f.last, -f.first);
        }
        probe_release(&f);
    }
    s->depth = kept;
    ProbeStack *p = &probe_parked;
    kept = 0;
    for (Py_ssize_t i = 0; i < p->depth; i++) {
        ProbeFrame f = p->frames[i];
        if (f.scope == scope || !probe_scope_open(self, f.scope)) {
            /* suspended when the scope ended, or parked here by a scope that another thread
             * closed (a generator resumed last on another thread); or ended by an exception
             * thrown in at its ``await`` or ``yield from`` that it did not handle (no probe
             * ran: a task's cancellation), whose exit arc is the scope's */
            if (f.scope == scope && f.gen != NULL && f.wref != NULL &&
                PyWeakref_GET_OBJECT(f.wref) != Py_None &&
                f.gen->gi_frame_state > FRAME_EXECUTING && probe_gen_raised(f.gen)) {
                probe_arc(f.arcs, f.last, -f.first);
            }
            probe_release(&f);
        }
        else {
            p->frames[kept++] = f;
        }
    }
    p->depth = kept;
    ProbeStack *both[2] = {s, p};
    for (int k = 0; k < 2; k++) {
        if (both[k]->depth == 0 && both[k]->frames != NULL) {
            PyMem_RawFree(both[k]->frames);
            both[k]->frames = NULL;
            both[k]->cap = 0;
        }
    }
    probe_busy = 0;
    Py_RETURN_NONE;
}

/* depth(): how many frames this thread's stack and parked list hold (for tests). */
static PyObject *
ExactProbes_depth(ExactProbes *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromSsize_t(probe_stack.depth + probe_parked.depth);
}

static PyMethodDef ExactProbes_gone_def = {
    "gone", (PyCFunction)ExactProbes_gone, METH_O,
    "Settle the entry of a generator being released."};

static PyObject *
ExactProbes_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *var, *scope_type, *table, *census;
    if (!PyArg_ParseTuple(args, "O!O!O!O:ExactProbes", &PyContextVar_Type, &var, &PyType_Type,
                          &scope_type, &PyList_Type, &table, &census)) {
        return NULL;
    }
    PyTypeObject *st = (PyTypeObject *)scope_type;
    Py_ssize_t is_census = slot_offset(st, "is_census");
    Py_ssize_t files = is_census < 0 ? -1 : slot_offset(st, "files");
    Py_ssize_t closed = files < 0 ? -1 : slot_offset(st, "closed");
    if (closed < 0) {
        return NULL;
    }
    ExactProbes *self = (ExactProbes *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = (vectorcallfunc)ExactProbes_vectorcall;
    self->off_is_census = is_census;
    self->off_files = files;
    self->off_closed = closed;
    Py_INCREF(var);
    self->var = var;
    Py_INCREF(scope_type);
    self->scope_type = st;
    Py_INCREF(table);
    self->table = table;
    Py_INCREF(census);
    self->census = census;
    self->on_gone = PyCFunction_New(&ExactProbes_gone_def, (PyObject *)self);
    if (self->on_gone == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
ExactProbes_traverse(ExactProbes *self, visitproc visit, void *arg)
{
    Py_VISIT(self->var);
    Py_VISIT(self->scope_type);
    Py_VISIT(self->table);
    Py_VISIT(self->census);
    Py_VISIT(self->on_gone);
    for (Py_ssize_t i = 0; i < self->cache_len; i++) {
        Py_VISIT(self->cache_set[i]);
    }
    return 0;
}

static int
ExactProbes_clear(ExactProbes *self)
{
    Py_CLEAR(self->var);
    Py_CLEAR(self->scope_type);
    Py_CLEAR(self->table);
    Py_CLEAR(self->census);
    Py_CLEAR(self->on_gone);
    for (Py_ssize_t i = 0; i < self->cache_len; i++) {
        Py_CLEAR(self->cache_set[i]);
    }
    PyMem_Free(self->cache_set);
    PyMem_Free(self->cache_from);
    self->cache_set = NULL;
    self->cache_from = NULL;
    self->cache_len = 0;
    return 0;
}

static void
ExactProbes_dealloc(ExactProbes *self)
{
    PyObject_GC_UnTrack(self);
    ExactProbes_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef ExactProbes_members[] = {
    {"census", T_OBJECT, offsetof(ExactProbes, census), 0,
     "What LINE probes outside exact scopes call (None: census is off)."},
    {NULL},
};

static PyMethodDef ExactProbes_methods[] = {
    {"forget", (PyCFunction)ExactProbes_forget, METH_O,
     "Drop this thread's frames of a scope, recording exits by exception."},
    {"depth", (PyCFunction)ExactProbes_depth, METH_NOARGS,
     "How many frames this thread's stack holds."},
    {"__reduce__", (PyCFunction)probe_reduce, METH_NOARGS, "Pickles as a no-op callable."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ExactProbesType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "runcov.tracing._accel.ExactProbes",
    .tp_basicsize = sizeof(ExactProbes),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "ExactProbes(var, scope_type, table, census): what exact-mode probes call.",
    .tp_vectorcall_offset = offsetof(ExactProbes, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_new = ExactProbes_new,
    .tp_methods = ExactProbes_methods,
    .tp_members = ExactProbes_members,
    .tp_dealloc = (destructor)ExactProbes_dealloc,
    .tp_traverse = (traverseproc)ExactProbes_traverse,
    .tp_clear = (inquiry)ExactProbes_clear,
};

/* set_units(heads, unit): write ``unit`` (2 bytes) over each (code, index) of ``heads``, or,
 * when ``unit`` is None, each (code, index, unit) its own unit (see set_unit). */
static PyObject *
set_units(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyList_Check(args[0]) ||
        (args[1] != Py_None && (!PyBytes_Check(args[1]) || PyBytes_GET_SIZE(args[1]) != 2))) {
        PyErr_SetString(PyExc_TypeError, "set_units(heads: list, unit: 2 bytes | None)");
        return NULL;
    }
    PyObject *heads = args[0];
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(heads); i++) {
        PyObject *head = PyList_GET_ITEM(heads, i);
        if (!PyTuple_Check(head) || PyTuple_GET_SIZE(head) < 2 ||
            !PyCode_Check(PyTuple_GET_ITEM(head, 0))) {
            continue;
        }
        PyObject *unit = args[1];
        if (unit == Py_None) {
            if (PyTuple_GET_SIZE(head) < 3) {
                continue;
            }
            unit = PyTuple_GET_ITEM(head, 2);
            if (!PyBytes_Check(unit) || PyBytes_GET_SIZE(unit) != 2) {
                continue;
            }
        }
        PyCodeObject *code = (PyCodeObject *)PyTuple_GET_ITEM(head, 0);
        Py_ssize_t index = PyLong_AsSsize_t(PyTuple_GET_ITEM(head, 1));
        if (index < 0 || index >= Py_SIZE(code)) {
            PyErr_Clear();
            continue;
        }
        memcpy((char *)_PyCode_CODE(code) + index * sizeof(_Py_CODEUNIT),
               PyBytes_AS_STRING(unit), sizeof(_Py_CODEUNIT));
    }
    Py_RETURN_NONE;
}
#endif

static PyMethodDef accel_functions[] = {
    {"function_arcs", (PyCFunction)(void (*)(void))function_arcs_new, METH_FASTCALL,
     "function_arcs(arcs, last, first): an ordinary function frame's local tracer in an exact "
     "scope."},
    {"census_lines", (PyCFunction)(void (*)(void))census_lines_new, METH_FASTCALL,
     "census_lines(hits, mine, filename, code_lines, saturated, key, code): a frame's local "
     "tracer in a census scope."},
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
    {"set_units", (PyCFunction)(void (*)(void))set_units, METH_FASTCALL,
     "Write one code unit over many probe heads."},
    {"set_unit", (PyCFunction)(void (*)(void))set_unit, METH_FASTCALL,
     "set_unit(code, index, unit): write one code unit of a 3.11 code object's bytecode."},
#endif
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef accel_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "runcov.tracing._accel",
    .m_methods = accel_functions,
    .m_doc = "The tracing cores' recording callbacks in C.",
    .m_size = -1,
};

/* Add ``type`` to ``module`` as ``name``; -1 on error. */
static int
add_type(PyObject *module, const char *name, PyTypeObject *type)
{
    Py_INCREF(type);
    if (PyModule_AddObject(module, name, (PyObject *)type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return 0;
}

PyMODINIT_FUNC
PyInit__accel(void)
{
    if (PyType_Ready(&RecorderType) < 0 || PyType_Ready(&FunctionArcsType) < 0 ||
        PyType_Ready(&CensusLinesType) < 0 ||
        PyType_Ready(&DispatcherType) < 0 || PyType_Ready(&SpanGateType) < 0 ||
        intern_names() < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&accel_module);
    if (module == NULL) {
        return NULL;
    }
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
    if (PyType_Ready(&QuietType) < 0 || add_type(module, "Quiet", &QuietType) < 0 ||
        PyType_Ready(&ExactProbesType) < 0 ||
        add_type(module, "ExactProbes", &ExactProbesType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
#endif
    if (add_type(module, "Recorder", &RecorderType) < 0 ||
        add_type(module, "FunctionArcs", &FunctionArcsType) < 0 ||
        add_type(module, "Dispatcher", &DispatcherType) < 0 ||
        add_type(module, "SpanGate", &SpanGateType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
