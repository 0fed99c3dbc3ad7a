package paths

import (
	"errors"
	"strconv"
)

// ErrInvalidWorker reports a worker name that is not a DNS label. The name
// becomes a path component, so anything else (empty, "..", slashes,
// upper case that would collide on case-insensitive file systems) is
// refused before it can point outside the state tree.
var ErrInvalidWorker = errors.New("invalid worker name")

// ErrNoHome reports that no native state directory can be derived because
// the home directory is unknown or not absolute. Guessing (for example the
// current directory) would scatter keys wherever the worker was started.
var ErrNoHome = errors.New("cannot determine the home directory")

// ErrNotDir reports that the state path exists but is not a directory, which
// usually means a misconfigured --state or CRANK_STATE_DIR.
var ErrNotDir = errors.New("not a directory")

// ErrInsecurePerm reports a state directory that group or others may write
// to. Anyone who can write there can replace the pinned root or the key, so
// the worker refuses to use it rather than silently trusting it.
var ErrInsecurePerm = errors.New("directory is group- or world-writable")

// WorkerError reports an invalid worker name together with the name, so the
// operator sees exactly what was rejected. It matches ErrInvalidWorker with
// errors.Is.
type WorkerError struct {
	Name string // the rejected name, verbatim
}

func (e *WorkerError) Error() string {
	return "paths: invalid worker name " + strconv.Quote(e.Name) +
		": want a lower-case DNS label ([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)"
}

// Is makes errors.Is(err, ErrInvalidWorker) work without wrapping a string.
func (e *WorkerError) Is(target error) bool { return target == ErrInvalidWorker }

// PathError ties a failure to the path and operation it concerns, because an
// operator fixing a broken state directory needs to know which file is
// wrong. Err may wrap ErrNoHome, ErrNotDir, ErrInsecurePerm or an fs error.
type PathError struct {
	Op   string // what was being done: "resolve", "ensure", "write"
	Path string // the path concerned; may be empty for "resolve"
	Err  error
}

func (e *PathError) Error() string {
	if e.Path == "" {
		return "paths: " + e.Op + ": " + e.Err.Error()
	}
	return "paths: " + e.Op + " " + e.Path + ": " + e.Err.Error()
}

// Unwrap lets callers test the cause with errors.Is / errors.As.
func (e *PathError) Unwrap() error { return e.Err }
