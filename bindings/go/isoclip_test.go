package isoclip

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// The projector file of the built-in synthetic model (`isoclip fit -o FILE`): image maps,
// 768 -> 262 compact / 512 full. scripts/test-ffi.sh sets it.
func cliProjector(t *testing.T) string {
	path := os.Getenv("ISOCLIP_PROJECTOR")
	if path == "" {
		t.Fatal("set ISOCLIP_PROJECTOR to a projector file from `isoclip fit -o FILE` (scripts/test-ffi.sh does)")
	}
	return path
}

// splitmix64 uniform in [-1, 1).
type rng uint64

func (r *rng) uniform() float64 {
	*r += 0x9E3779B97F4A7C15
	z := uint64(*r)
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
	z = (z ^ (z >> 27)) * 0x94D049BB133111EB
	z ^= z >> 31
	return float64(z>>11)*(2.0/9007199254740992.0) - 1.0
}

func randomMatrix(rows, cols int, seed uint64) Matrix {
	r := rng(seed)
	m := Matrix{Data: make([]float64, rows*cols), Rows: rows, Cols: cols}
	for i := range m.Data {
		m.Data[i] = r.uniform()
	}
	return m
}

func randomRows(n int, seed uint64) []float32 {
	r := rng(seed)
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(r.uniform())
	}
	return x
}

// plainCLIP is normalize(x P): with k_top = k_bottom = 0 and a full-rank projector, the
// paper's full map equals plain CLIP. An independent reference.
func plainCLIP(x []float32, p Matrix) []float64 {
	rows := len(x) / p.Rows
	y := make([]float64, rows*p.Cols)
	for r := 0; r < rows; r++ {
		norm := 0.0
		for j := 0; j < p.Cols; j++ {
			acc := 0.0
			for i := 0; i < p.Rows; i++ {
				acc += float64(x[r*p.Rows+i]) * p.Data[i*p.Cols+j]
			}
			y[r*p.Cols+j] = acc
			norm += acc * acc
		}
		norm = math.Sqrt(norm)
		for j := 0; j < p.Cols; j++ {
			y[r*p.Cols+j] /= norm
		}
	}
	return y
}

func maxDiff(a []float32, b []float64) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	worst := 0.0
	for i := range a {
		worst = math.Max(worst, math.Abs(float64(a[i])-b[i]))
	}
	return worst
}

func fitModel(t *testing.T) (*Projector, Matrix) {
	pi, pt := randomMatrix(12, 8, 1), randomMatrix(8, 8, 2)
	p, err := Fit(pi, pt, FitOptions{Image: &Band{0, 0}, Text: &Band{1, 2}})
	if err != nil {
		t.Fatal(err)
	}
	return p, pi
}

func TestVersion(t *testing.T) {
	if Version() == "" || checkABI() != nil {
		t.Fatalf("version %q, abi check %v", Version(), checkABI())
	}
	if StatusShape.String() != "ISOCLIP_ERR_SHAPE" {
		t.Fatal(StatusShape.String())
	}
}

func TestFitProjectsLikeTheReference(t *testing.T) {
	p, pi := fitModel(t)
	defer p.Close()
	if d, err := p.EmbeddingDim(); err != nil || d != 8 { // the projectors are 12 x 8 and 8 x 8
		t.Fatalf("EmbeddingDim: %d %v", d, err)
	}
	if d, _ := p.InputDim(ModalityImage, InputFeatures); d != 12 {
		t.Fatalf("input dim %d", d)
	}
	if d, _ := p.OutputDim(ModalityText, FormCompact); d != 5 {
		t.Fatalf("text compact dim %d", d)
	}
	if b, _ := p.Band(ModalityText); b != (Band{1, 2}) {
		t.Fatalf("band %v", b)
	}
	fp, err := p.Fingerprint()
	if err != nil || len(fp) != 64 {
		t.Fatalf("fingerprint %q %v", fp, err)
	}

	x := randomRows(40*12, 5)
	full := make([]float32, 40*8)
	if _, err := p.ProjectFloat32(x, full, ProjectOptions{Modality: ModalityImage, Form: FormFull}); err != nil {
		t.Fatal(err)
	}
	if d := maxDiff(full, plainCLIP(x, pi)); d > 2e-5 {
		t.Fatalf("full form differs from plain CLIP by %g", d)
	}
	// Compact: the same inner products.
	compact := make([]float32, 40*8)
	if _, err := p.ProjectFloat32(x, compact, ProjectOptions{Modality: ModalityImage}); err != nil {
		t.Fatal(err)
	}
	for a := 0; a < 40; a++ {
		for b := 0; b < 40; b++ {
			gc, gf := 0.0, 0.0
			for j := 0; j < 8; j++ {
				gc += float64(compact[a*8+j]) * float64(compact[b*8+j])
				gf += float64(full[a*8+j]) * float64(full[b*8+j])
			}
			if math.Abs(gc-gf) > 2e-5 {
				t.Fatalf("gram (%d,%d): compact %g full %g", a, b, gc, gf)
			}
		}
	}
	// Strided fp16 output, unnormalised.
	out := Rows[uint16]{Data: make([]uint16, 40*10), Rows: 40, Cols: 8, Stride: 10}
	for i := range out.Data {
		out.Data[i] = 0xFFFF
	}
	if _, err := Project(p, Rows[float32]{Data: x, Rows: 40, Cols: 12}, out,
		ProjectOptions{Modality: ModalityImage, Form: FormFull, NoNormalize: true}); err != nil {
		t.Fatal(err)
	}
	for r := 0; r < 40; r++ {
		if out.Data[r*10+8] != 0xFFFF || out.Data[r*10+9] != 0xFFFF {
			t.Fatalf("row %d: the padding between rows was written", r)
		}
	}
}

func TestErrorsCarryStatusAndMessage(t *testing.T) {
	_, err := Load("/no/such/file.st")
	var e *Error
	if !errors.As(err, &e) || !errors.Is(err, ErrIO) ||
		e.Message != "isoclip_projector_load: /no/such/file.st: No such file or directory (os error 2)" {
		t.Fatalf("load: %#v", err)
	}
	p, _ := fitModel(t)
	x, y := make([]float32, 4*11), make([]float32, 4*8)
	_, err = Project(p, Rows[float32]{Data: x, Rows: 4, Cols: 11}, Rows[float32]{Data: y, Rows: 4, Cols: 8},
		ProjectOptions{Modality: ModalityImage})
	if !errors.Is(err, ErrShape) || err.Error() != "isoclip_project: input rows have 11 columns but the projector expects 12" {
		t.Fatalf("shape: %v", err)
	}
	// Checked in Go before C sees a pointer.
	_, err = Project(p, Rows[float32]{Data: x[:10], Rows: 4, Cols: 12}, Rows[float32]{Data: y, Rows: 4, Cols: 8},
		ProjectOptions{Modality: ModalityImage})
	if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "the slice holds 10 elements but 4 rows need 48") {
		t.Fatalf("short slice: %v", err)
	}
	_, err = p.InputDim(ModalityAuto, InputFeatures)
	if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "holds both image and text maps") {
		t.Fatalf("auto: %v", err)
	}
	_, err = Fit(randomMatrix(8, 8, 1), randomMatrix(8, 8, 2), FitOptions{Image: &Band{4, 4}})
	if !errors.Is(err, ErrBand) || !strings.HasPrefix(err.Error(), "isoclip_projector_fit: empty band: k_top 4 + k_bottom 4 = 8") {
		t.Fatalf("band: %v", err)
	}
	x = make([]float32, 4*12)
	x[3] = float32(math.NaN())
	_, err = Project(p, Rows[float32]{Data: x, Rows: 4, Cols: 12}, Rows[float32]{Data: y, Rows: 4, Cols: 8},
		ProjectOptions{Modality: ModalityImage})
	if !errors.Is(err, ErrNonFiniteRow) || !strings.HasPrefix(err.Error(), "isoclip_project: row 0 contains NaN or Inf") {
		t.Fatalf("nan: %v", err)
	}
	st, err := Project(p, Rows[float32]{Data: x, Rows: 4, Cols: 12}, Rows[float32]{Data: y, Rows: 4, Cols: 8},
		ProjectOptions{Modality: ModalityImage, NonFinite: NonFiniteZero})
	if err != nil || st.NonFiniteRows != 1 || st.ZeroNormRows != 3 {
		t.Fatalf("nan as zero: %+v %v", st, err)
	}
	// A view of zero columns is an error, not an index out of range.
	for _, cols := range [][2]int{{0, 8}, {12, 0}} {
		in := Rows[float32]{Rows: 4, Cols: cols[0]}
		out := Rows[float32]{Rows: 4, Cols: cols[1]}
		if cols[0] > 0 {
			in.Data = x
		} else {
			out.Data = y
		}
		_, err = Project(p, in, out, ProjectOptions{Modality: ModalityImage})
		if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "4 rows of 0 columns is not a valid view") {
			t.Fatalf("zero columns %v: %v", cols, err)
		}
	}
	if h := headerABIVersion(); !abiCompatible(h) || !abiCompatible(h+1) || abiCompatible(h+1000) || abiCompatible(h-1000) {
		t.Fatal("abiCompatible")
	}
	if _, err := NewBackend(DeviceCUDA, 0); err != nil && !errors.Is(err, ErrDeviceUnavailable) {
		t.Fatalf("cuda: %v", err)
	}
	// One device by index: the CPU is device 0 and has no other.
	if b, err := NewBackendOnDevice(DeviceCPU, 0, 1); err != nil {
		t.Fatalf("cpu 0: %v", err)
	} else {
		b.Close()
	}
	if _, err := NewBackendOnDevice(DeviceCPU, 1, 1); !errors.Is(err, ErrInvalidArgument) ||
		!strings.Contains(err.Error(), "device index 1 with the CPU: the CPU is device 0") {
		t.Fatalf("cpu 1: %v", err)
	}
	if _, err := NewBackendOnDevice(DeviceCPU, -2, 1); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("index -2: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != ErrClosed {
		t.Fatalf("second close: %v", err)
	}
	if _, err := p.Fingerprint(); err != ErrClosed {
		t.Fatalf("use after close: %v", err)
	}
}

// Many goroutines share one projector; each result equals the single-goroutine one, and each
// goroutine's error message is its own (read in the same cgo call as the failure).
func TestConcurrentProjection(t *testing.T) {
	p, err := Load(cliProjector(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	backend, err := NewBackend(DeviceCPU, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Close()
	const workers, rows = 32, 150
	inputs := make([][]float32, workers)
	want := make([][]float32, workers)
	for i := range inputs {
		inputs[i] = randomRows(rows*768, uint64(100+i))
		want[i] = make([]float32, rows*262)
		if _, err := p.ProjectFloat32(inputs[i], want[i], ProjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers*8)
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			opts := ProjectOptions{}
			if i%2 == 1 {
				opts.Backend = backend
			}
			for round := 0; round < 3; round++ {
				got := make([]float32, rows*262)
				if _, err := p.ProjectFloat32(inputs[i], got, opts); err != nil {
					errs <- err
					return
				}
				for k := range got {
					if got[k] != want[i][k] {
						errs <- fmt.Errorf("worker %d round %d: element %d differs", i, round, k)
						return
					}
				}
				bad := 700 + i
				_, err := Project(p, Rows[float32]{Data: make([]float32, bad), Rows: 1, Cols: bad},
					Rows[float32]{Data: make([]float32, 262), Rows: 1, Cols: 262}, opts)
				wantMsg := fmt.Sprintf("isoclip_project: input rows have %d columns but the projector expects 768", bad)
				if err == nil || err.Error() != wantMsg {
					errs <- fmt.Errorf("worker %d: error %v, want %q", i, err, wantMsg)
					return
				}
				runtime.Gosched()
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func writeNpy(t *testing.T, path string, x []float32, rows, cols int) {
	dict := fmt.Sprintf("{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }", rows, cols)
	pad := (64 - (10+len(dict)+1)%64) % 64
	dict += strings.Repeat(" ", pad) + "\n"
	var buf bytes.Buffer
	buf.WriteString("\x93NUMPY\x01\x00")
	binary.Write(&buf, binary.LittleEndian, uint16(len(dict)))
	buf.WriteString(dict)
	binary.Write(&buf, binary.LittleEndian, x)
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestJob(t *testing.T) {
	p, pi := fitModel(t)
	defer p.Close()
	dir := t.TempDir()
	in := filepath.Join(dir, "in")
	os.Mkdir(in, 0o755)
	x := randomRows(300*12, 9)
	writeNpy(t, filepath.Join(in, "a.npy"), x, 300, 12)
	writeNpy(t, filepath.Join(in, "b.npy"), randomRows(100*12, 10), 100, 12)

	var seen []Progress
	opts := JobOptions{ProjectOptions: ProjectOptions{Modality: ModalityImage, Form: FormFull},
		OutputDType: DTypeF32, ChunkBytes: 1, Progress: func(pr Progress) { seen = append(seen, pr) }}
	job, err := p.NewJob(in, filepath.Join(dir, "out"), opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := job.Stat(StatRowsProcessed); !errors.Is(err, ErrInvalidState) {
		t.Fatalf("stat before run: %v", err)
	}
	if err := job.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n, _ := job.Stat(StatRowsProcessed); n != 400 {
		t.Fatalf("rows processed %d", n)
	}
	s, err := job.Summary()
	if err != nil || s.ShardsProcessed != 2 || s.DOut != 8 || s.Form != "full" {
		t.Fatalf("summary %+v %v", s, err)
	}
	if len(seen) != 1+3+1+2 || seen[len(seen)-1] != (Progress{400, 400, 2, 2}) {
		t.Fatalf("progress %v", seen)
	}
	job.Close()
	raw, _ := os.ReadFile(filepath.Join(dir, "out", "a.npy"))
	header := 10 + int(binary.LittleEndian.Uint16(raw[8:10]))
	got := make([]float32, (len(raw)-header)/4)
	binary.Read(bytes.NewReader(raw[header:]), binary.LittleEndian, got)
	if d := maxDiff(got, plainCLIP(x, pi)); d > 2e-5 {
		t.Fatalf("job output differs from plain CLIP by %g", d)
	}

	// Cancelled through the context, from the progress callback: the callback waits until the
	// context's watcher has cancelled the job, so the next chunk sees it.
	ctx, cancel := context.WithCancel(context.Background())
	job, err = p.NewJob(in, filepath.Join(dir, "out2"), opts)
	if err != nil {
		t.Fatal(err)
	}
	job.state.progress = func(pr Progress) {
		if pr.RowsDone > 0 {
			cancel()
			for i := 0; i < 5000 && !job.cancelled.Load(); i++ {
				time.Sleep(time.Millisecond)
			}
		}
	}
	if err := job.Run(ctx); !errors.Is(err, ErrCancelled) || err.Error() != "isoclip_job_run: cancelled" {
		t.Fatalf("cancelled run: %v", err)
	}
	job.Close()
	entries, _ := os.ReadDir(filepath.Join(dir, "out2"))
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".npy") || strings.HasSuffix(e.Name(), ".isoclip-tmp") {
			t.Fatalf("cancelled run left %s", e.Name())
		}
	}
	// A context already done cancels before any work.
	job, _ = p.NewJob(in, filepath.Join(dir, "out2"), JobOptions{ProjectOptions: opts.ProjectOptions})
	if err := job.Run(ctx); !errors.Is(err, ErrCancelled) {
		t.Fatalf("done context: %v", err)
	}
	job.Close()

	// A panicking callback: the job stops, Run re-panics with the value.
	opts.Progress = func(pr Progress) {
		if pr.RowsDone > 0 {
			panic("stop here")
		}
	}
	job, err = p.NewJob(in, filepath.Join(dir, "out3"), opts)
	if err != nil {
		t.Fatal(err)
	}
	func() {
		defer func() {
			if r := recover(); r != "stop here" {
				t.Fatalf("recovered %v", r)
			}
		}()
		job.Run(nil)
		t.Fatal("Run returned instead of panicking")
	}()
	if err := job.Run(nil); !errors.Is(err, ErrCancelled) {
		t.Fatalf("after the panic: %v", err)
	}
	job.Close()
	if err := job.Run(nil); err != ErrClosed {
		t.Fatalf("closed job: %v", err)
	}
}

// Objects dropped without Close are freed by their finalizers.
func TestFinalizersFreeForgottenObjects(t *testing.T) {
	before := finalized.Load()
	for i := 0; i < 8; i++ {
		p, _ := fitModel(t)
		b, err := NewBackend(DeviceCPU, 1)
		if err != nil {
			t.Fatal(err)
		}
		_ = p
		_ = b
	}
	deadline := time.Now().Add(10 * time.Second)
	for finalized.Load()-before < 16 && time.Now().Before(deadline) {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	if n := finalized.Load() - before; n < 16 {
		t.Fatalf("%d of 16 objects finalized", n)
	}
}

// cpuHasBF16 says whether /proc/cpuinfo lists AVX-512 BF16 (known is false where it cannot be
// read: then either outcome of a bf16 projection is accepted).
func cpuHasBF16() (has, known bool) {
	info, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return false, false
	}
	for _, line := range strings.Split(string(info), "\n") {
		if strings.HasPrefix(line, "flags") {
			flags := " " + strings.Join(strings.Fields(line), " ") + " "
			return strings.Contains(flags, " avx512f ") && strings.Contains(flags, " avx512_bf16 "), true
		}
	}
	return false, false
}

// PrecisionBF16 is close to f32 but not the same bytes (or ErrDeviceUnavailable on a CPU
// without AVX-512 BF16); jobs record it; an unknown value is ErrInvalidArgument.
func TestPrecision(t *testing.T) {
	p, _ := fitModel(t)
	defer p.Close()
	const rows = 9
	x := randomRows(rows*12, 21)
	f32 := make([]float32, rows*8)
	bf16 := make([]float32, rows*8)
	opts := ProjectOptions{Modality: ModalityImage, Form: FormFull}
	if _, err := p.ProjectFloat32(x, f32, opts); err != nil {
		t.Fatal(err)
	}
	explicit := make([]float32, rows*8)
	opts.Precision = PrecisionF32
	if _, err := p.ProjectFloat32(x, explicit, opts); err != nil || !slicesEqual(explicit, f32) {
		t.Fatalf("PrecisionF32 is not the default: %v", err)
	}
	has, known := cpuHasBF16()
	opts.Precision = PrecisionBF16
	_, err := p.ProjectFloat32(x, bf16, opts)
	switch {
	case err == nil && (has || !known):
		want := make([]float64, len(f32))
		for i, v := range f32 {
			want[i] = float64(v)
		}
		if d := maxDiff(bf16, want); d >= 2e-2 || d == 0 {
			t.Fatalf("bf16 differs from f32 by %g (want 0 < diff < 2e-2)", d)
		}
	case errors.Is(err, ErrDeviceUnavailable) && (!has || !known):
		if !strings.Contains(err.Error(), "bf16 precision needs a CPU with AVX-512 BF16") {
			t.Fatalf("message: %v", err)
		}
	default:
		t.Fatalf("bf16 projection (CPU has AVX-512 BF16: %v, known: %v): %v", has, known, err)
	}
	opts.Precision = Precision(9)
	if _, err := p.ProjectFloat32(x, bf16, opts); !errors.Is(err, ErrInvalidArgument) ||
		!strings.Contains(err.Error(), "unknown precision 9") {
		t.Fatalf("unknown precision: %v", err)
	}

	// A job records its arithmetic.
	dir := t.TempDir()
	in := filepath.Join(dir, "in")
	os.Mkdir(in, 0o755)
	writeNpy(t, filepath.Join(in, "a.npy"), x, rows, 12)
	for _, c := range []struct {
		precision  Precision
		arithmetic string
	}{{0, "f32"}, {PrecisionBF16, "bf16"}} {
		jo := JobOptions{ProjectOptions: ProjectOptions{Modality: ModalityImage, Precision: c.precision}}
		job, err := p.NewJob(in, filepath.Join(dir, "out-"+c.arithmetic), jo)
		if err != nil {
			t.Fatal(err)
		}
		err = job.Run(context.Background())
		if c.precision == PrecisionBF16 && known && !has {
			if !errors.Is(err, ErrDeviceUnavailable) {
				t.Fatalf("bf16 job on a CPU without it: %v", err)
			}
			job.Close()
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if s, err := job.Summary(); err != nil || s.Arithmetic != c.arithmetic {
			t.Fatalf("summary %+v %v, want arithmetic %q", s, err, c.arithmetic)
		}
		job.Close()
	}
}

func slicesEqual(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return true
}
