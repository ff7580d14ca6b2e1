package isoclip

import (
	"errors"
	"io/fs"
	"os"
	"strings"
	"syscall"
	"testing"
)

// The result of SetDefaultThreads called before any projection (TestMain).
var defaultThreadsErr error

func TestMain(m *testing.M) {
	defaultThreadsErr = SetDefaultThreads(2)
	os.Exit(m.Run())
}

func TestSetDefaultThreadsOnlyBeforeTheDefaultBackendExists(t *testing.T) {
	if defaultThreadsErr != nil {
		t.Fatalf("before the first projection: %v", defaultThreadsErr)
	}
	p, _ := fitModel(t)
	defer p.Close()
	x, y := randomRows(12, 3), make([]float32, 8)
	if _, err := p.ProjectFloat32(x, y, ProjectOptions{Modality: ModalityImage}); err != nil {
		t.Fatal(err)
	}
	err := SetDefaultThreads(1)
	if !errors.Is(err, ErrInvalidState) || !strings.HasPrefix(err.Error(), "isoclip_set_default_threads: the default backend already exists") {
		t.Fatalf("after: %v", err)
	}
	if err := SetDefaultThreads(-1); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("negative: %v", err)
	}
}

func TestErrorsCarryTheOSCode(t *testing.T) {
	_, err := Load("/no/such/file.st")
	var e *Error
	if !errors.As(err, &e) || e.OSCode != int(syscall.ENOENT) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("load: %#v", err)
	}
	_, err = LoadFromMemory([]byte("not a projector"))
	if !errors.As(err, &e) || e.OSCode != 0 || errors.Unwrap(err) != nil || !errors.Is(err, ErrFormat) {
		t.Fatalf("not from the OS: %#v", err)
	}
}

func TestLoadFromMemoryAndURL(t *testing.T) {
	path := cliProjector(t)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	fromFile, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fromFile.Close()
	want, _ := fromFile.ContentDigest()
	fromMemory, err := LoadFromMemory(data)
	if err != nil {
		t.Fatal(err)
	}
	defer fromMemory.Close()
	if got, _ := fromMemory.ContentDigest(); got != want {
		t.Fatalf("from memory: digest %s, want %s", got, want)
	}
	_, err = LoadFromMemory([]byte("not a projector"))
	if !errors.Is(err, ErrFormat) || !strings.HasPrefix(err.Error(), "isoclip_projector_load_from_memory: (projector in memory)") {
		t.Fatalf("junk: %v", err)
	}
	// A plain path through LoadURL reads the file, storage options or not.
	fromLocation, err := LoadURL(path, map[string]string{"aws_region": "eu-west-1"})
	if err != nil {
		t.Fatal(err)
	}
	defer fromLocation.Close()
	if got, _ := fromLocation.ContentDigest(); got != want {
		t.Fatalf("from a location: digest %s, want %s", got, want)
	}
	_, err = LoadURL("s3://bad host/p.st", nil)
	if !errors.Is(err, ErrInvalidArgument) || err.Error() != "isoclip_projector_load_url: s3://bad host/p.st: not a valid URL (invalid domain character)" {
		t.Fatalf("bad URL: %v", err)
	}
	_, err = LoadURL(path, map[string]string{"": "x"})
	if !errors.Is(err, ErrInvalidArgument) || err.Error() != "isoclip_job_options_add_storage_option: the storage option key is empty" {
		t.Fatalf("empty key: %v", err)
	}
}

func TestMapIsTheModelsProjectorForTheFullBand(t *testing.T) {
	p, pi := fitModel(t)
	defer p.Close()
	// With the band 0/0 and a full-rank model, the image full map is the model's P itself.
	m, err := p.Map(ModalityImage, InputFeatures, FormFull)
	if err != nil {
		t.Fatal(err)
	}
	if m.Rows != 12 || m.Cols != 8 || len(m.W) != 96 || len(m.B) != 8 {
		t.Fatalf("shape %d x %d, %d weights, %d biases", m.Rows, m.Cols, len(m.W), len(m.B))
	}
	for i, w := range m.W {
		if d := float64(w) - pi.Data[i]; d > 1e-5 || d < -1e-5 {
			t.Fatalf("W[%d] = %v, want %v", i, w, pi.Data[i])
		}
	}
	for i, b := range m.B {
		if b != 0 {
			t.Fatalf("B[%d] = %v, want 0 (no bias)", i, b)
		}
	}
	if _, err := p.Map(ModalityAuto, InputFeatures, FormFull); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("auto: %v", err)
	}
}

func TestCancelToken(t *testing.T) {
	p, _ := fitModel(t)
	defer p.Close()
	const rows = 300
	x := randomRows(rows*12, 5)
	plain, withToken := make([]float32, rows*8), make([]float32, rows*8)
	in := Rows[float32]{Data: x, Rows: rows, Cols: 12}
	opts := ProjectOptions{Modality: ModalityImage}
	if _, err := Project(p, in, Rows[float32]{Data: plain, Rows: rows, Cols: 8}, opts); err != nil {
		t.Fatal(err)
	}
	token, err := NewCancelToken()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ProjectWithCancel(p, in, Rows[float32]{Data: withToken, Rows: rows, Cols: 8}, opts, token); err != nil {
		t.Fatal(err)
	}
	for i := range plain {
		if plain[i] != withToken[i] {
			t.Fatalf("row %d differs with a live token", i/8)
		}
	}
	token.Cancel()
	_, err = ProjectWithCancel(p, in, Rows[float32]{Data: withToken, Rows: rows, Cols: 8}, opts, token)
	if !errors.Is(err, ErrCancelled) || err.Error() != "isoclip_project_with_cancel: cancelled" {
		t.Fatalf("cancelled: %v", err)
	}
	if err := token.Close(); err != nil {
		t.Fatal(err)
	}
	if err := token.Close(); err != ErrClosed {
		t.Fatalf("second close: %v", err)
	}
	_, err = ProjectWithCancel(p, in, Rows[float32]{Data: withToken, Rows: rows, Cols: 8}, opts, token)
	if err != ErrClosed {
		t.Fatalf("closed token: %v", err)
	}
	token.Cancel() // no effect on a closed token
}

func TestJobScaleOutArguments(t *testing.T) {
	p, _ := fitModel(t)
	defer p.Close()
	base := JobOptions{ProjectOptions: ProjectOptions{Modality: ModalityImage}}

	opts := base
	opts.NumShards, opts.ShardIndex = 2, 2
	_, err := p.NewJob("s3://bucket/emb/", "s3://bucket/out/", opts)
	if !errors.Is(err, ErrInvalidArgument) || err.Error() != "isoclip_job_options_set_shards: worker index 2 is out of range for 2 workers (0 to 1)" {
		t.Fatalf("shard index: %v", err)
	}
	opts.ShardIndex = -1
	if _, err := p.NewJob("in", "out", opts); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("negative index: %v", err)
	}
	opts.ShardIndex = 1
	opts.StorageOptions = map[string]string{"aws_region": "eu-west-1", "aws_allow_http": "true"}
	_, err = p.NewJob("s3://bad host/emb/", "s3://bucket/out/", opts)
	if !errors.Is(err, ErrInvalidArgument) || err.Error() != "isoclip_job_new: s3://bad host/emb/: not a valid URL (invalid domain character)" {
		t.Fatalf("bad URL: %v", err)
	}
	job, err := p.NewJob("s3://bucket/emb/", "gs://bucket/out/", opts)
	if err != nil {
		t.Fatal(err)
	}
	if n, i := job.Shards(); n != 2 || i != 1 {
		t.Fatalf("shards: %d %d", n, i)
	}
	job.Close()

	// From the environment: a Kubernetes Indexed Job needs its count.
	for _, name := range []string{"SLURM_ARRAY_TASK_ID", "ISOCLIP_NUM_SHARDS", "ISOCLIP_SHARD_INDEX"} {
		t.Setenv(name, "")
	}
	t.Setenv("JOB_COMPLETION_INDEX", "1")
	fromEnv := base
	fromEnv.ShardsFromEnv = true
	_, err = p.NewJob("s3://bucket/emb/", "s3://bucket/out/", fromEnv)
	if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "this is worker 1 of a Kubernetes Indexed Job, but the number of workers is unknown") {
		t.Fatalf("no count: %v", err)
	}
	t.Setenv("ISOCLIP_NUM_SHARDS", "2")
	job, err = p.NewJob("s3://bucket/emb/", "s3://bucket/out/", fromEnv)
	if err != nil {
		t.Fatal(err)
	}
	if n, i := job.Shards(); n != 2 || i != 1 { // from the environment
		t.Fatalf("shards from the environment: %d %d", n, i)
	}
	job.Close()
}
