package isoclip

/*
#include <stdint.h>
#include <stdlib.h>
#include "shim.h"
*/
import "C"

import (
	"context"
	"encoding/json"
	"math"
	"runtime"
	"runtime/cgo"
	"sync"
	"sync/atomic"
	"unsafe"
)

// Progress of a running job: rows and shards done out of those this run processes (shards a
// previous run finished are skipped and not counted).
type Progress struct {
	RowsDone, RowsTotal, ShardsDone, ShardsTotal uint64
}

// JobOptions configures a Job. The zero value is the defaults of `isoclip project`: the
// projection defaults, fp16 output, finished shards skipped, 16 MiB chunks, no progress.
type JobOptions struct {
	// ProjectOptions says how rows are projected; its Precision is the job's arithmetic, which
	// each finished shard records (a rerun at another precision redoes the shards).
	ProjectOptions
	// OutputDType of the output shards (zero: DTypeF16).
	OutputDType DType
	// Overwrite redoes shards that a previous run finished.
	Overwrite bool
	// ChunkBytes is the output bytes per chunk, the unit of I/O, progress and cancellation
	// (0: 16 MiB).
	ChunkBytes int
	// NumShards and ShardIndex make the job one worker of several sharing the output: it takes
	// shard k of the sorted listing when k % NumShards == ShardIndex. NumShards 0 means 1:
	// every shard.
	NumShards, ShardIndex int
	// ShardsFromEnv takes NumShards and ShardIndex from the environment instead: a Slurm job
	// array, a Kubernetes Indexed Job (with ISOCLIP_NUM_SHARDS), or ISOCLIP_NUM_SHARDS and
	// ISOCLIP_SHARD_INDEX.
	ShardsFromEnv bool
	// StorageOptions are object-store options for URLs ("aws_region", ...), over the
	// environment's.
	StorageOptions map[string]string
	// Progress, if set, is called on the goroutine running Run: when the work is planned, after
	// each chunk and after each shard. If it panics, the job is cancelled and Run re-panics.
	Progress func(Progress)
}

// JobStat selects a counter of a finished run.
type JobStat int32

const (
	StatShardsTotal     JobStat = C.ISOCLIP_JOB_STAT_SHARDS_TOTAL
	StatShardsProcessed JobStat = C.ISOCLIP_JOB_STAT_SHARDS_PROCESSED
	StatShardsSkipped   JobStat = C.ISOCLIP_JOB_STAT_SHARDS_SKIPPED
	StatRowsProcessed   JobStat = C.ISOCLIP_JOB_STAT_ROWS_PROCESSED
	StatRowsSkipped     JobStat = C.ISOCLIP_JOB_STAT_ROWS_SKIPPED
	StatZeroNormRows    JobStat = C.ISOCLIP_JOB_STAT_ZERO_NORM_ROWS
	StatNonFiniteRows   JobStat = C.ISOCLIP_JOB_STAT_NONFINITE_ROWS
	StatBytesRead       JobStat = C.ISOCLIP_JOB_STAT_BYTES_READ
	StatBytesWritten    JobStat = C.ISOCLIP_JOB_STAT_BYTES_WRITTEN
)

// JobSummary is the summary of a successful run (the JSON of `isoclip project --json`).
type JobSummary struct {
	Backend         string  `json:"backend"`
	OutputDir       string  `json:"output_dir"`
	ShardsTotal     int     `json:"shards_total"`
	ShardsProcessed int     `json:"shards_processed"`
	ShardsSkipped   int     `json:"shards_skipped"`
	RowsProcessed   uint64  `json:"rows_processed"`
	RowsSkipped     uint64  `json:"rows_skipped"`
	Seconds         float64 `json:"seconds"`
	RowsPerSecond   float64 `json:"rows_per_second"`
	BytesRead       uint64  `json:"bytes_read"`
	GBPerSecondRead float64 `json:"gb_per_second_read"`
	BytesWritten    uint64  `json:"bytes_written"`
	ZeroNormRows    uint64  `json:"zero_norm_rows"`
	NonFiniteRows   uint64  `json:"nonfinite_rows"`
	DIn             int     `json:"d_in"`
	DOut            int     `json:"d_out"`
	Form            string  `json:"form"`
	DType           string  `json:"dtype"`
	Normalized      bool    `json:"normalized"`
	InputKind       string  `json:"input_kind"`
	Modality        string  `json:"modality"`
	ProjectorDigest string  `json:"projector"`
	// Arithmetic computed the outputs: "f32", "bf16" (PrecisionBF16) or "cuda-fp16".
	Arithmetic string `json:"arithmetic"`
}

// Job projects the .npy shards at an input path or URL (a file, a directory or prefix, or a
// list file) into an output directory or URL prefix, resumably: the same work and files as `isoclip project`. Run it on one
// goroutine; Cancel from any goroutine. The job keeps its own reference to the projector and
// the backend.
type Job struct {
	runMu  sync.Mutex // held by Run; Close takes it first, so it waits for a run to end
	cMu    sync.Mutex // guards j for Cancel and the queries
	j      *C.isoclip_job
	state  *jobState
	handle cgo.Handle
	// cancelled records that Cancel reached the library (tests wait on it).
	cancelled atomic.Bool
	// numShards and shardIndex: this worker's place, resolved when the job was made.
	numShards, shardIndex C.uint32_t
}

// Shards returns this worker's place among the workers sharing the output, as resolved when the
// job was made (from JobOptions or, with ShardsFromEnv, from the environment): it takes shard k
// of the sorted listing when k % numShards == shardIndex.
func (j *Job) Shards() (numShards, shardIndex int) {
	return int(j.numShards), int(j.shardIndex)
}

type jobState struct {
	progress func(Progress)
	panicked bool
	panicVal interface{}
	job      *C.isoclip_job
}

//export isoclipGoProgress
func isoclipGoProgress(h C.uintptr_t, rowsDone, rowsTotal, shardsDone, shardsTotal C.uint64_t) {
	st := cgo.Handle(h).Value().(*jobState)
	if st.panicked {
		return
	}
	// A panic must not unwind through the C library: keep it, stop the job, re-panic in Run.
	defer func() {
		if r := recover(); r != nil {
			st.panicked, st.panicVal = true, r
			C.isoclip_job_cancel(st.job)
		}
	}()
	st.progress(Progress{uint64(rowsDone), uint64(rowsTotal), uint64(shardsDone), uint64(shardsTotal)})
}

// NewJob creates a job; nothing is read or written until Run.
func (p *Projector) NewJob(input, outputDir string, opts JobOptions) (*Job, error) {
	if opts.ChunkBytes < 0 {
		return nil, invalid("ChunkBytes must be >= 0, got %d", opts.ChunkBytes)
	}
	numShards := opts.NumShards
	if numShards == 0 {
		numShards = 1
	}
	if numShards < 0 || int64(numShards) > math.MaxUint32 || opts.ShardIndex < 0 || int64(opts.ShardIndex) > math.MaxUint32 {
		return nil, invalid("NumShards %d and ShardIndex %d must be within 0 to %d", opts.NumShards, opts.ShardIndex, uint32(math.MaxUint32))
	}
	h, unlock, err := p.handle()
	if err != nil {
		return nil, err
	}
	defer unlock()
	b, unlockB, err := opts.Backend.handle()
	if err != nil {
		return nil, err
	}
	defer unlockB()
	dtype := opts.OutputDType
	if dtype == 0 {
		dtype = DTypeF16
	}
	job := &Job{}
	var handle C.uintptr_t
	if opts.Progress != nil {
		job.state = &jobState{progress: opts.Progress}
		job.handle = cgo.NewHandle(job.state)
		handle = C.uintptr_t(job.handle)
	}
	cin, cout := C.CString(input), C.CString(outputDir)
	defer C.free(unsafe.Pointer(cin))
	defer C.free(unsafe.Pointer(cout))
	keys, values, nOptions, freeOptions := cStringPairs(opts.StorageOptions)
	defer freeOptions()
	var msg C.isoclip_go_failure
	s := C.isoclip_go_job_new(h, b, C.int32_t(opts.Modality), C.int32_t(kindOrDefault(opts.InputKind)),
		C.int32_t(formOrDefault(opts.Form)), C.bool(!opts.NoNormalize), C.int32_t(nonFiniteOrDefault(opts.NonFinite)),
		C.int32_t(precisionOrDefault(opts.Precision)), C.int32_t(dtype), C.bool(opts.Overwrite), C.size_t(opts.ChunkBytes), handle,
		C.uint32_t(numShards), C.uint32_t(opts.ShardIndex), C.bool(opts.ShardsFromEnv), keys, values, nOptions,
		cin, cout, &job.j, &job.numShards, &job.shardIndex, &msg)
	if err := failure(s, &msg); err != nil {
		if job.state != nil {
			job.handle.Delete()
		}
		return nil, err
	}
	if job.state != nil {
		job.state.job = job.j
	}
	runtime.SetFinalizer(job, func(j *Job) {
		if j.Close() == nil {
			finalized.Add(1)
		}
	})
	return job, nil
}

// Run runs the job to its end on this goroutine. When ctx is done, the job is cancelled (at
// the next chunk) and Run returns an error matching ErrCancelled. Cancellation is permanent for
// the job; a new job with the same paths resumes, skipping finished shards.
func (j *Job) Run(ctx context.Context) error {
	j.runMu.Lock()
	defer j.runMu.Unlock()
	if j.j == nil {
		return ErrClosed
	}
	if ctx != nil && ctx.Err() != nil {
		j.Cancel()
	} else if ctx != nil && ctx.Done() != nil {
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			select {
			case <-ctx.Done():
				j.Cancel()
			case <-stop:
			}
		}()
	}
	var msg C.isoclip_go_failure
	err := failure(C.isoclip_go_job_run(j.j, &msg), &msg)
	if j.state != nil && j.state.panicked {
		v := j.state.panicVal
		j.state.panicked, j.state.panicVal = false, nil
		panic(v)
	}
	return err
}

// Cancel asks a run to stop at the next chunk; safe from any goroutine, at any time (also from
// the Progress callback). It has no effect on a closed job.
func (j *Job) Cancel() {
	j.cMu.Lock()
	defer j.cMu.Unlock()
	if j.j != nil {
		C.isoclip_job_cancel(j.j)
		j.cancelled.Store(true)
	}
}

// Stat returns a counter of the last successful run (ErrInvalidState before one).
func (j *Job) Stat(which JobStat) (uint64, error) {
	j.cMu.Lock()
	defer j.cMu.Unlock()
	if j.j == nil {
		return 0, ErrClosed
	}
	var out C.uint64_t
	var msg C.isoclip_go_failure
	if err := failure(C.isoclip_go_job_stat(j.j, C.int32_t(which), &out, &msg), &msg); err != nil {
		return 0, err
	}
	return uint64(out), nil
}

// Summary returns the summary of the last successful run (ErrInvalidState before one).
func (j *Job) Summary() (JobSummary, error) {
	j.cMu.Lock()
	defer j.cMu.Unlock()
	if j.j == nil {
		return JobSummary{}, ErrClosed
	}
	var out *C.char
	var msg C.isoclip_go_failure
	if err := failure(C.isoclip_go_job_summary(j.j, &out, &msg), &msg); err != nil {
		return JobSummary{}, err
	}
	defer C.free(unsafe.Pointer(out))
	var s JobSummary
	if err := json.Unmarshal([]byte(C.GoString(out)), &s); err != nil {
		return JobSummary{}, err
	}
	return s, nil
}

// Close frees the job, waiting for a run in progress to end (cancel it first to make that
// quick). Closing twice returns ErrClosed.
func (j *Job) Close() error {
	j.runMu.Lock()
	defer j.runMu.Unlock()
	j.cMu.Lock()
	defer j.cMu.Unlock()
	if j.j == nil {
		return ErrClosed
	}
	C.isoclip_job_free(j.j)
	j.j = nil
	if j.state != nil {
		j.handle.Delete()
	}
	runtime.SetFinalizer(j, nil)
	return nil
}
