// Package isoclip is the Go binding of libisoclip, an engine for IsoCLIP: training-free
// intra-modal alignment of CLIP embeddings (image-image and text-text search).
//
// A Projector holds the aligned maps of a model. Load one from a projector file
// (`isoclip fit -o FILE`) or fit it from the model's projector matrices, project rows of
// features or embeddings with Project, or run the streaming engine over .npy shards on disk
// with a Job. Close what you open; a finalizer frees forgotten objects as a safety net.
//
// A Projector and a Backend are safe for concurrent use by many goroutines. Errors are *Error
// values carrying the library's status and message; compare with errors.Is(err, ErrShape) etc.
//
// The package links against libisoclip through pkg-config (`isoclip.pc`): set PKG_CONFIG_PATH
// to the directory holding it, and LD_LIBRARY_PATH to the library's directory at run time.
package isoclip

/*
#cgo pkg-config: isoclip
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"
)

// Status is a status code of the C API (ISOCLIP_OK, ISOCLIP_ERR_*). Values never change.
type Status int32

// The statuses of the C API.
const (
	StatusOK                Status = C.ISOCLIP_OK
	StatusInvalidArgument   Status = C.ISOCLIP_ERR_INVALID_ARGUMENT
	StatusNullPointer       Status = C.ISOCLIP_ERR_NULL_POINTER
	StatusBufferTooSmall    Status = C.ISOCLIP_ERR_BUFFER_TOO_SMALL
	StatusIO                Status = C.ISOCLIP_ERR_IO
	StatusFormat            Status = C.ISOCLIP_ERR_FORMAT
	StatusUnsupported       Status = C.ISOCLIP_ERR_UNSUPPORTED
	StatusShape             Status = C.ISOCLIP_ERR_SHAPE
	StatusTensorNotFound    Status = C.ISOCLIP_ERR_TENSOR_NOT_FOUND
	StatusNonFinite         Status = C.ISOCLIP_ERR_NON_FINITE
	StatusNonFiniteRow      Status = C.ISOCLIP_ERR_NON_FINITE_ROW
	StatusBand              Status = C.ISOCLIP_ERR_BAND
	StatusNumerical         Status = C.ISOCLIP_ERR_NUMERICAL
	StatusCancelled         Status = C.ISOCLIP_ERR_CANCELLED
	StatusDeviceUnavailable Status = C.ISOCLIP_ERR_DEVICE_UNAVAILABLE
	StatusInvalidState      Status = C.ISOCLIP_ERR_INVALID_STATE
	StatusUnrepresentable   Status = C.ISOCLIP_ERR_UNREPRESENTABLE
	StatusResourceExhausted Status = C.ISOCLIP_ERR_RESOURCE_EXHAUSTED
	StatusPanic             Status = C.ISOCLIP_ERR_PANIC
)

// String returns the C name of the status, e.g. "ISOCLIP_ERR_SHAPE".
func (s Status) String() string { return C.GoString(C.isoclip_status_name(C.int32_t(s))) }

// Error is a failure reported by the library: its status, message and the operating-system
// error behind it (OSCode, an errno such as ENOENT; 0 when the failure did not come from the OS).
type Error struct {
	Status  Status
	Message string
	OSCode  int
}

func (e *Error) Error() string { return e.Message }

// Unwrap returns the OS error behind the failure (a syscall.Errno), so that
// errors.Is(err, fs.ErrNotExist) works; nil when there is none.
func (e *Error) Unwrap() error {
	if e.OSCode == 0 {
		return nil
	}
	return syscall.Errno(e.OSCode)
}

// Is reports whether target is an *Error with the same status and no message (the sentinels
// below) or the same status and message.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Status == e.Status && (t.Message == "" || t.Message == e.Message)
}

// Sentinels for errors.Is.
var (
	ErrInvalidArgument   = &Error{Status: StatusInvalidArgument}
	ErrIO                = &Error{Status: StatusIO}
	ErrFormat            = &Error{Status: StatusFormat}
	ErrUnsupported       = &Error{Status: StatusUnsupported}
	ErrShape             = &Error{Status: StatusShape}
	ErrNonFinite         = &Error{Status: StatusNonFinite}
	ErrNonFiniteRow      = &Error{Status: StatusNonFiniteRow}
	ErrBand              = &Error{Status: StatusBand}
	ErrCancelled         = &Error{Status: StatusCancelled}
	ErrDeviceUnavailable = &Error{Status: StatusDeviceUnavailable}
	ErrInvalidState      = &Error{Status: StatusInvalidState}
	ErrUnrepresentable   = &Error{Status: StatusUnrepresentable}
	ErrResourceExhausted = &Error{Status: StatusResourceExhausted}
	ErrClosed            = errors.New("isoclip: use of a closed object")
)

// failure turns a shim's status and failure record (a malloc'd message and the OS code) into
// an error (nil for OK).
func failure(s C.isoclip_status, f *C.isoclip_go_failure) error {
	if f.message != nil {
		defer C.free(unsafe.Pointer(f.message))
	}
	if s == C.ISOCLIP_OK {
		return nil
	}
	return &Error{Status: Status(s), Message: C.GoString(f.message), OSCode: int(f.os_code)}
}

// cStringPairs copies a map into two C arrays of C strings (keys sorted), freed by the returned
// function.
func cStringPairs(m map[string]string) (keys, values **C.char, n C.size_t, free func()) {
	if len(m) == 0 {
		return nil, nil, 0, func() {}
	}
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	size := C.size_t(len(m)) * C.size_t(unsafe.Sizeof((*C.char)(nil)))
	keys, values = (**C.char)(C.malloc(size)), (**C.char)(C.malloc(size))
	ks, vs := unsafe.Slice(keys, len(m)), unsafe.Slice(values, len(m))
	for i, k := range names {
		ks[i], vs[i] = C.CString(k), C.CString(m[k])
	}
	return keys, values, C.size_t(len(m)), func() {
		for i := range names {
			C.free(unsafe.Pointer(ks[i]))
			C.free(unsafe.Pointer(vs[i]))
		}
		C.free(unsafe.Pointer(keys))
		C.free(unsafe.Pointer(values))
	}
}

// SetDefaultThreads sets the thread count of the default backend (the one a nil *Backend
// stands for; 0: one per available core). Call it before the first projection with the
// default backend; afterwards it fails with ErrInvalidState.
func SetDefaultThreads(threads int) error {
	if err := checkABI(); err != nil {
		return err
	}
	if threads < 0 {
		return invalid("threads must be >= 0, got %d", threads)
	}
	var msg C.isoclip_go_failure
	return failure(C.isoclip_go_set_default_threads(C.size_t(threads), &msg), &msg)
}

func invalid(format string, args ...interface{}) error {
	return &Error{Status: StatusInvalidArgument, Message: "isoclip: " + fmt.Sprintf(format, args...)}
}

var abiOnce sync.Once
var abiErr error

// checkABI fails when the library is not the ABI this package was built against.
func checkABI() error {
	abiOnce.Do(func() {
		got, want := uint32(C.isoclip_abi_version()), uint32(C.ISOCLIP_ABI_VERSION)
		if !abiCompatible(got) {
			abiErr = &Error{Status: StatusUnsupported, Message: fmt.Sprintf(
				"isoclip: libisoclip %s has ABI version %d but this package was built against isoclip.h %s (ABI version %d: it needs the same major and at least its minor)",
				C.GoString(C.isoclip_version()), got, C.GoString(C.isoclip_go_header_version()), want)}
		}
	})
	return abiErr
}

// abiCompatible reports whether a library of ABI version v (MAJOR*1000 + MINOR) runs this
// package: the same major as its header, and at least its minor (ISOCLIP_ABI_COMPATIBLE).
func abiCompatible(v uint32) bool {
	return v/1000 == uint32(C.ISOCLIP_ABI_VERSION_MAJOR) && v%1000 >= uint32(C.ISOCLIP_ABI_VERSION_MINOR)
}

// headerABIVersion is ISOCLIP_ABI_VERSION of the header this package was built with.
func headerABIVersion() uint32 { return uint32(C.ISOCLIP_ABI_VERSION) }

// Version returns the library's version ("MAJOR.MINOR.PATCH").
func Version() string { return C.GoString(C.isoclip_version()) }

// Modality selects the image or the text maps.
type Modality int32

const (
	// ModalityAuto is the projector's only modality (an error when it holds both).
	ModalityAuto  Modality = C.ISOCLIP_MODALITY_AUTO
	ModalityImage Modality = C.ISOCLIP_MODALITY_IMAGE
	ModalityText  Modality = C.ISOCLIP_MODALITY_TEXT
)

// InputKind says what input rows are. The zero value means InputFeatures.
type InputKind int32

const (
	// InputFeatures are pre-projection features (d_in columns): the paper's route.
	InputFeatures InputKind = C.ISOCLIP_INPUT_FEATURES
	// InputEmbeddings are already-projected CLIP embeddings (d columns): the exact embedding route.
	InputEmbeddings InputKind = C.ISOCLIP_INPUT_EMBEDDINGS
)

// Form is the output form. The zero value means FormCompact.
type Form int32

const (
	// FormCompact has m = r - k_top - k_bottom columns with the inner products of FormFull.
	FormCompact Form = C.ISOCLIP_FORM_COMPACT
	// FormFull has d columns: the paper's map.
	FormFull Form = C.ISOCLIP_FORM_FULL
)

// NonFinite says what to do with input rows holding NaN or Inf. The zero value means
// NonFiniteError.
type NonFinite int32

const (
	NonFiniteError NonFinite = C.ISOCLIP_NONFINITE_ERROR
	NonFiniteZero  NonFinite = C.ISOCLIP_NONFINITE_ZERO
)

// Precision is the arithmetic of a projection. The zero value means PrecisionF32.
type Precision int32

const (
	// PrecisionF32 computes with f32 inputs, weights and sums: the reference, on every backend.
	PrecisionF32 Precision = C.ISOCLIP_PRECISION_F32
	// PrecisionBF16 rounds inputs and weights to bf16 and sums in f32: the CPU backend's
	// AVX-512 BF16 kernel (normalised outputs move by up to about 1e-3). On a CPU without
	// AVX-512 BF16 a projection fails with ErrDeviceUnavailable, on a CUDA backend with
	// ErrInvalidArgument.
	PrecisionBF16 Precision = C.ISOCLIP_PRECISION_BF16
)

// Device says where projections run.
type Device int32

const (
	DeviceAuto Device = C.ISOCLIP_DEVICE_AUTO
	DeviceCPU  Device = C.ISOCLIP_DEVICE_CPU
	DeviceCUDA Device = C.ISOCLIP_DEVICE_CUDA
)

// DeviceIndexAll lets a backend use every device of its kind (every visible GPU; the CPU).
const DeviceIndexAll = C.ISOCLIP_DEVICE_INDEX_ALL

// DType is the element type of job output shards. The zero value means DTypeF16.
type DType int32

const (
	DTypeF16 DType = C.ISOCLIP_DTYPE_F16
	DTypeF32 DType = C.ISOCLIP_DTYPE_F32
)

// finalized counts objects freed by a finalizer (tests read it).
var finalized atomic.Int64

// Backend is a device with its resources (a thread pool, a GPU context). Safe for concurrent use.
// A nil *Backend wherever one is accepted means the library's shared CPU backend.
type Backend struct {
	mu sync.RWMutex
	b  *C.isoclip_backend
}

// NewBackend opens a backend on every device of its kind. threads 0 uses every core.
// DeviceCUDA fails with ErrDeviceUnavailable when no GPU is usable; DeviceAuto falls back to
// the CPU.
func NewBackend(device Device, threads int) (*Backend, error) {
	return NewBackendOnDevice(device, DeviceIndexAll, threads)
}

// NewBackendOnDevice opens a backend on one device of its kind: index is a CUDA device ordinal
// (as nvidia-smi numbers them under CUDA_VISIBLE_DEVICES), 0 for the CPU, or DeviceIndexAll.
// An index the device kind does not have fails (ErrInvalidArgument for the CPU,
// ErrDeviceUnavailable for a GPU).
func NewBackendOnDevice(device Device, index int, threads int) (*Backend, error) {
	if err := checkABI(); err != nil {
		return nil, err
	}
	if threads < 0 {
		return nil, invalid("threads must be >= 0, got %d", threads)
	}
	if index < DeviceIndexAll || int64(index) > math.MaxInt32 {
		return nil, invalid("device index %d is out of range (DeviceIndexAll or 0 to %d)", index, math.MaxInt32)
	}
	var b *C.isoclip_backend
	var msg C.isoclip_go_failure
	s := C.isoclip_go_backend_new(C.int32_t(device), C.int32_t(index), C.size_t(threads), &b, &msg)
	if err := failure(s, &msg); err != nil {
		return nil, err
	}
	be := &Backend{b: b}
	runtime.SetFinalizer(be, func(be *Backend) {
		if be.Close() == nil {
			finalized.Add(1)
		}
	})
	return be, nil
}

// Describe returns a one-line description and the device the backend runs on.
func (be *Backend) Describe() (string, Device, error) {
	h, unlock, err := be.handle()
	if err != nil {
		return "", 0, err
	}
	defer unlock()
	var out *C.char
	var msg C.isoclip_go_failure
	var dev C.int32_t
	s := C.isoclip_go_backend_describe(h, &out, &dev, &msg)
	if err := failure(s, &msg); err != nil {
		return "", 0, err
	}
	defer C.free(unsafe.Pointer(out))
	return C.GoString(out), Device(dev), nil
}

// Close frees the backend; jobs created with it keep it alive until they are closed. Closing
// twice returns ErrClosed. It waits for calls in progress on other goroutines.
func (be *Backend) Close() error {
	be.mu.Lock()
	defer be.mu.Unlock()
	if be.b == nil {
		return ErrClosed
	}
	C.isoclip_backend_free(be.b)
	be.b = nil
	runtime.SetFinalizer(be, nil)
	return nil
}

// handle returns the C handle with a read lock held (nil for a nil backend: the default).
func (be *Backend) handle() (*C.isoclip_backend, func(), error) {
	if be == nil {
		return nil, func() {}, nil
	}
	be.mu.RLock()
	if be.b == nil {
		be.mu.RUnlock()
		return nil, nil, ErrClosed
	}
	return be.b, be.mu.RUnlock, nil
}

// Projector holds the aligned maps of a model. Immutable and safe for concurrent use.
type Projector struct {
	mu sync.RWMutex
	p  *C.isoclip_projector
}

func newProjector(p *C.isoclip_projector) *Projector {
	pr := &Projector{p: p}
	runtime.SetFinalizer(pr, func(pr *Projector) {
		if pr.Close() == nil {
			finalized.Add(1)
		}
	})
	return pr
}

// Load reads a projector file written by `isoclip fit` or Save.
func Load(path string) (*Projector, error) {
	if err := checkABI(); err != nil {
		return nil, err
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var p *C.isoclip_projector
	var msg C.isoclip_go_failure
	if err := failure(C.isoclip_go_projector_load(cpath, &p, &msg), &msg); err != nil {
		return nil, err
	}
	return newProjector(p), nil
}

// LoadURL reads a projector file from a path or a URL (s3://, gs://, az://, http(s)://,
// file://), with object-store options (as the object_store crate names them: "aws_region",
// ...) over the environment's; nil for none.
func LoadURL(location string, storageOptions map[string]string) (*Projector, error) {
	if err := checkABI(); err != nil {
		return nil, err
	}
	cloc := C.CString(location)
	defer C.free(unsafe.Pointer(cloc))
	keys, values, n, free := cStringPairs(storageOptions)
	defer free()
	var p *C.isoclip_projector
	var msg C.isoclip_go_failure
	if err := failure(C.isoclip_go_projector_load_url(cloc, keys, values, n, &p, &msg), &msg); err != nil {
		return nil, err
	}
	return newProjector(p), nil
}

// LoadFromMemory reads a projector from the bytes of a projector file (read during the call
// only), with the checks of Load.
func LoadFromMemory(data []byte) (*Projector, error) {
	if err := checkABI(); err != nil {
		return nil, err
	}
	var ptr unsafe.Pointer
	if len(data) > 0 {
		ptr = unsafe.Pointer(&data[0])
	}
	var p *C.isoclip_projector
	var msg C.isoclip_go_failure
	s := C.isoclip_go_projector_load_from_memory(ptr, C.size_t(len(data)), &p, &msg)
	runtime.KeepAlive(data)
	if err := failure(s, &msg); err != nil {
		return nil, err
	}
	return newProjector(p), nil
}

// LinearMap is the map a projection applies before normalisation: y = x W + B, with W row-major
// Rows x Cols (input x output) and B of Cols values (zeros when the map has no bias).
type LinearMap struct {
	W          []float32
	B          []float32
	Rows, Cols int
}

// Map returns the linear map of a projection with modality m, input kind k and form f (to fold
// into a FAISS LinearTransform or a GEMM of your own).
func (p *Projector) Map(m Modality, k InputKind, f Form) (LinearMap, error) {
	rows, err := p.InputDim(m, k)
	if err != nil {
		return LinearMap{}, err
	}
	cols, err := p.OutputDim(m, f)
	if err != nil {
		return LinearMap{}, err
	}
	h, unlock, err := p.handle()
	if err != nil {
		return LinearMap{}, err
	}
	defer unlock()
	lm := LinearMap{W: make([]float32, rows*cols), B: make([]float32, cols), Rows: rows, Cols: cols}
	var w, b *C.float
	if len(lm.W) > 0 {
		w = (*C.float)(unsafe.Pointer(&lm.W[0]))
	}
	if len(lm.B) > 0 {
		b = (*C.float)(unsafe.Pointer(&lm.B[0]))
	}
	var msg C.isoclip_go_failure
	s := C.isoclip_go_projector_matrix(h, C.int32_t(m), C.int32_t(kindOrDefault(k)), C.int32_t(formOrDefault(f)),
		w, C.size_t(rows), C.size_t(cols), b, &msg)
	runtime.KeepAlive(lm.W)
	runtime.KeepAlive(lm.B)
	if err := failure(s, &msg); err != nil {
		return LinearMap{}, err
	}
	return lm, nil
}

// CancelToken stops the projections that use it (ProjectWithCancel): checked before the first
// row and then every 65 536 rows. Cancel is safe from any goroutine at any time; any number of
// calls may share a token; a cancelled token stays cancelled.
type CancelToken struct {
	mu sync.RWMutex
	t  *C.isoclip_cancel_token
}

// NewCancelToken returns a token that is not cancelled.
func NewCancelToken() (*CancelToken, error) {
	if err := checkABI(); err != nil {
		return nil, err
	}
	var t *C.isoclip_cancel_token
	if s := C.isoclip_cancel_token_new(&t); s != C.ISOCLIP_OK {
		return nil, &Error{Status: Status(s), Message: "isoclip: isoclip_cancel_token_new failed"}
	}
	ct := &CancelToken{t: t}
	runtime.SetFinalizer(ct, func(ct *CancelToken) {
		if ct.Close() == nil {
			finalized.Add(1)
		}
	})
	return ct, nil
}

// Cancel makes every call using the token fail with ErrCancelled at its next check. It has no
// effect on a closed token.
func (ct *CancelToken) Cancel() {
	ct.mu.RLock()
	defer ct.mu.RUnlock()
	if ct.t != nil {
		C.isoclip_cancel_token_cancel(ct.t)
	}
}

// Close frees the token, waiting for calls using it to end. Closing twice returns ErrClosed.
func (ct *CancelToken) Close() error {
	ct.mu.Lock()
	defer ct.mu.Unlock()
	if ct.t == nil {
		return ErrClosed
	}
	C.isoclip_cancel_token_free(ct.t)
	ct.t = nil
	runtime.SetFinalizer(ct, nil)
	return nil
}

// handle returns the C token with a read lock held (nil for a nil token: never cancelled).
func (ct *CancelToken) handle() (*C.isoclip_cancel_token, func(), error) {
	if ct == nil {
		return nil, func() {}, nil
	}
	ct.mu.RLock()
	if ct.t == nil {
		ct.mu.RUnlock()
		return nil, nil, ErrClosed
	}
	return ct.t, ct.mu.RUnlock, nil
}

// Matrix is a dense row-major matrix of float64.
type Matrix struct {
	Data       []float64
	Rows, Cols int
}

// Band keeps the singular directions [KTop, r - KBottom) of Ψ.
type Band struct{ KTop, KBottom int }

// FitOptions says which modalities to fit, with which band, and optional biases (for affine
// projectors e = x P + b; nil for none).
type FitOptions struct {
	Image, Text         *Band
	ImageBias, TextBias []float64
}

func ptrF64(v []float64) *C.double {
	if len(v) == 0 {
		return nil
	}
	return (*C.double)(unsafe.Pointer(&v[0]))
}

// Fit computes an aligned projector from the model's projector matrices in "input x output"
// orientation: image is d_i x d (OpenAI's visual.proj), text is d_t x d.
func Fit(image, text Matrix, opts FitOptions) (*Projector, error) {
	if err := checkABI(); err != nil {
		return nil, err
	}
	for _, m := range []struct {
		name string
		m    Matrix
	}{{"image", image}, {"text", text}} {
		if m.m.Rows < 0 || m.m.Cols < 0 || len(m.m.Data) != m.m.Rows*m.m.Cols {
			return nil, invalid("%s matrix: %d values for %d x %d", m.name, len(m.m.Data), m.m.Rows, m.m.Cols)
		}
	}
	band := func(b *Band) (C.bool, C.size_t, C.size_t, error) {
		if b == nil {
			return false, 0, 0, nil
		}
		if b.KTop < 0 || b.KBottom < 0 {
			return false, 0, 0, invalid("band %d/%d is negative", b.KTop, b.KBottom)
		}
		return true, C.size_t(b.KTop), C.size_t(b.KBottom), nil
	}
	iset, itop, ibot, err := band(opts.Image)
	if err != nil {
		return nil, err
	}
	tset, ttop, tbot, err := band(opts.Text)
	if err != nil {
		return nil, err
	}
	var p *C.isoclip_projector
	var msg C.isoclip_go_failure
	s := C.isoclip_go_projector_fit(ptrF64(image.Data), C.size_t(image.Rows), C.size_t(image.Cols),
		ptrF64(text.Data), C.size_t(text.Rows), C.size_t(text.Cols),
		iset, itop, ibot, tset, ttop, tbot,
		ptrF64(opts.ImageBias), C.size_t(len(opts.ImageBias)),
		ptrF64(opts.TextBias), C.size_t(len(opts.TextBias)), &p, &msg)
	runtime.KeepAlive(image.Data)
	runtime.KeepAlive(text.Data)
	if err := failure(s, &msg); err != nil {
		return nil, err
	}
	return newProjector(p), nil
}

// Close frees the projector. Jobs created from it stay valid. Closing twice returns ErrClosed.
// It waits for projections in progress on other goroutines.
func (p *Projector) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.p == nil {
		return ErrClosed
	}
	C.isoclip_projector_free(p.p)
	p.p = nil
	runtime.SetFinalizer(p, nil)
	return nil
}

func (p *Projector) handle() (*C.isoclip_projector, func(), error) {
	p.mu.RLock()
	if p.p == nil {
		p.mu.RUnlock()
		return nil, nil, ErrClosed
	}
	return p.p, p.mu.RUnlock, nil
}

// Save writes the projector to a projector file.
func (p *Projector) Save(path string) error {
	h, unlock, err := p.handle()
	if err != nil {
		return err
	}
	defer unlock()
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var msg C.isoclip_go_failure
	return failure(C.isoclip_go_projector_save(h, cpath, &msg), &msg)
}

// HasModality reports whether the projector holds maps for m (ModalityImage or ModalityText).
func (p *Projector) HasModality(m Modality) (bool, error) {
	h, unlock, err := p.handle()
	if err != nil {
		return false, err
	}
	defer unlock()
	var out C.bool
	var msg C.isoclip_go_failure
	if err := failure(C.isoclip_go_projector_has_modality(h, C.int32_t(m), &out, &msg), &msg); err != nil {
		return false, err
	}
	return bool(out), nil
}

func kindOrDefault(k InputKind) InputKind {
	if k == 0 {
		return InputFeatures
	}
	return k
}

func formOrDefault(f Form) Form {
	if f == 0 {
		return FormCompact
	}
	return f
}

// EmbeddingDim is the model's embedding dimension d (the input columns of the embedding route).
func (p *Projector) EmbeddingDim() (int, error) {
	h, unlock, err := p.handle()
	if err != nil {
		return 0, err
	}
	defer unlock()
	var out C.size_t
	var msg C.isoclip_go_failure
	s := C.isoclip_go_projector_embedding_dim(h, &out, &msg)
	if err := failure(s, &msg); err != nil {
		return 0, err
	}
	return int(out), nil
}

// InputDim is the number of columns input rows of modality m and kind k must have.
func (p *Projector) InputDim(m Modality, k InputKind) (int, error) {
	h, unlock, err := p.handle()
	if err != nil {
		return 0, err
	}
	defer unlock()
	var out C.size_t
	var msg C.isoclip_go_failure
	s := C.isoclip_go_projector_input_dim(h, C.int32_t(m), C.int32_t(kindOrDefault(k)), &out, &msg)
	if err := failure(s, &msg); err != nil {
		return 0, err
	}
	return int(out), nil
}

// OutputDim is the number of columns a projection of modality m writes in form f.
func (p *Projector) OutputDim(m Modality, f Form) (int, error) {
	h, unlock, err := p.handle()
	if err != nil {
		return 0, err
	}
	defer unlock()
	var out C.size_t
	var msg C.isoclip_go_failure
	s := C.isoclip_go_projector_output_dim(h, C.int32_t(m), C.int32_t(formOrDefault(f)), &out, &msg)
	if err := failure(s, &msg); err != nil {
		return 0, err
	}
	return int(out), nil
}

// Band returns the band of modality m.
func (p *Projector) Band(m Modality) (Band, error) {
	h, unlock, err := p.handle()
	if err != nil {
		return Band{}, err
	}
	defer unlock()
	var top, bottom C.size_t
	var msg C.isoclip_go_failure
	if err := failure(C.isoclip_go_projector_band(h, C.int32_t(m), &top, &bottom, &msg), &msg); err != nil {
		return Band{}, err
	}
	return Band{KTop: int(top), KBottom: int(bottom)}, nil
}

func (p *Projector) hexString(digest bool) (string, error) {
	h, unlock, err := p.handle()
	if err != nil {
		return "", err
	}
	defer unlock()
	var out *C.char
	var msg C.isoclip_go_failure
	if err := failure(C.isoclip_go_projector_fingerprint(h, C.bool(digest), &out, &msg), &msg); err != nil {
		return "", err
	}
	defer C.free(unsafe.Pointer(out))
	return C.GoString(out), nil
}

// Fingerprint identifies the model weights the projector was fitted from (64 hex digits).
func (p *Projector) Fingerprint() (string, error) { return p.hexString(false) }

// ContentDigest identifies the projector's maps, band included (64 hex digits).
func (p *Projector) ContentDigest() (string, error) { return p.hexString(true) }

// ProjectOptions says how rows are projected. The zero value is the defaults: the projector's
// only modality, features, compact form, L2-normalised, NaN/Inf rows are an error, f32
// arithmetic, the shared CPU backend.
type ProjectOptions struct {
	Modality    Modality
	InputKind   InputKind
	Form        Form
	NoNormalize bool
	NonFinite   NonFinite
	Precision   Precision
	Backend     *Backend
}

// Stats counts what one projection met.
type Stats struct {
	// ZeroNormRows had a zero projection (written as zeros).
	ZeroNormRows uint64
	// NonFiniteRows held NaN or Inf and were written as zeros (NonFiniteZero).
	NonFiniteRows uint64
}

// Element is an element type of projection buffers: float32, or uint16 holding fp16 bits.
type Element interface{ ~float32 | ~uint16 }

// Rows is a matrix view over a slice: Rows rows of Cols elements, row i starting at element
// i*Stride (Stride 0: Cols, dense).
type Rows[T Element] struct {
	Data               []T
	Rows, Cols, Stride int
}

func (r Rows[T]) check(what string) (stride int, err error) {
	stride = r.Stride
	if stride == 0 {
		stride = r.Cols
	}
	if r.Rows < 0 || r.Cols < 0 || stride < r.Cols {
		return 0, invalid("%s: %d rows, %d columns, stride %d is not a valid view", what, r.Rows, r.Cols, stride)
	}
	if r.Rows > 0 && r.Cols == 0 {
		return 0, invalid("%s: %d rows of 0 columns is not a valid view (a row needs at least one column)", what, r.Rows)
	}
	if r.Rows > 0 && len(r.Data) < (r.Rows-1)*stride+r.Cols {
		return 0, invalid("%s: the slice holds %d elements but %d rows need %d", what, len(r.Data), r.Rows, (r.Rows-1)*stride+r.Cols)
	}
	return stride, nil
}

func dtypeOf[T Element]() (C.int32_t, int) {
	var zero T
	switch any(zero).(type) {
	case float32:
		return C.ISOCLIP_DTYPE_F32, 4
	case uint16:
		return C.ISOCLIP_DTYPE_F16, 2
	}
	// A named type over float32 or uint16.
	if unsafe.Sizeof(zero) == 4 {
		return C.ISOCLIP_DTYPE_F32, 4
	}
	return C.ISOCLIP_DTYPE_F16, 2
}

// Project projects the rows of in into out (the same number of rows) through p. Safe for
// concurrent use; each call needs its own output.
func Project[In, Out Element](p *Projector, in Rows[In], out Rows[Out], opts ProjectOptions) (Stats, error) {
	return ProjectWithCancel(p, in, out, opts, nil)
}

// ProjectWithCancel is Project that stops with ErrCancelled once token is cancelled (the
// output's content is then unspecified). A nil token is never cancelled.
func ProjectWithCancel[In, Out Element](p *Projector, in Rows[In], out Rows[Out], opts ProjectOptions, token *CancelToken) (Stats, error) {
	inStride, err := in.check("input")
	if err != nil {
		return Stats{}, err
	}
	outStride, err := out.check("output")
	if err != nil {
		return Stats{}, err
	}
	if in.Rows != out.Rows {
		return Stats{}, &Error{Status: StatusShape, Message: fmt.Sprintf("isoclip: input has %d rows but output has %d", in.Rows, out.Rows)}
	}
	h, unlock, err := p.handle()
	if err != nil {
		return Stats{}, err
	}
	defer unlock()
	b, unlockB, err := opts.Backend.handle()
	if err != nil {
		return Stats{}, err
	}
	defer unlockB()
	t, unlockT, err := token.handle()
	if err != nil {
		return Stats{}, err
	}
	defer unlockT()
	inType, inSize := dtypeOf[In]()
	outType, outSize := dtypeOf[Out]()
	var inPtr, outPtr unsafe.Pointer
	if in.Rows > 0 {
		inPtr = unsafe.Pointer(&in.Data[0])
		outPtr = unsafe.Pointer(&out.Data[0])
	}
	var zero, nonfinite C.uint64_t
	var msg C.isoclip_go_failure
	s := C.isoclip_go_project(h, b, C.int32_t(opts.Modality), C.int32_t(kindOrDefault(opts.InputKind)),
		C.int32_t(formOrDefault(opts.Form)), C.bool(!opts.NoNormalize), C.int32_t(nonFiniteOrDefault(opts.NonFinite)),
		C.int32_t(precisionOrDefault(opts.Precision)), C.size_t(in.Rows), inPtr, inType, C.size_t(in.Cols), C.size_t(inStride*inSize),
		outPtr, outType, C.size_t(out.Cols), C.size_t(outStride*outSize), t, &zero, &nonfinite, &msg)
	runtime.KeepAlive(in.Data)
	runtime.KeepAlive(out.Data)
	if err := failure(s, &msg); err != nil {
		return Stats{}, err
	}
	return Stats{ZeroNormRows: uint64(zero), NonFiniteRows: uint64(nonfinite)}, nil
}

func precisionOrDefault(p Precision) Precision {
	if p == 0 {
		return PrecisionF32
	}
	return p
}

func nonFiniteOrDefault(n NonFinite) NonFinite {
	if n == 0 {
		return NonFiniteError
	}
	return n
}

// ProjectFloat32 projects dense float32 rows: the row count is len(in) divided by the input
// dimension for opts, and out must hold exactly that many rows of the output dimension.
func (p *Projector) ProjectFloat32(in, out []float32, opts ProjectOptions) (Stats, error) {
	inDim, err := p.InputDim(opts.Modality, opts.InputKind)
	if err != nil {
		return Stats{}, err
	}
	outDim, err := p.OutputDim(opts.Modality, opts.Form)
	if err != nil {
		return Stats{}, err
	}
	if len(in)%inDim != 0 || len(out) != len(in)/inDim*outDim {
		return Stats{}, &Error{Status: StatusShape, Message: fmt.Sprintf(
			"isoclip: %d input values are not whole rows of %d, or %d output values are not as many rows of %d",
			len(in), inDim, len(out), outDim)}
	}
	rows := len(in) / inDim
	return Project(p, Rows[float32]{Data: in, Rows: rows, Cols: inDim}, Rows[float32]{Data: out, Rows: rows, Cols: outDim}, opts)
}
