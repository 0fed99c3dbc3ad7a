package pki

import "errors"

// ErrExists is returned (wrapped in a *FileError naming the file) by Create
// when any CA file is already present. Create refuses rather than overwriting
// because replacing a root key silently invalidates every client that trusts
// the old root.
var ErrExists = errors.New("CA material already exists")

// ErrKeyMismatch reports that a private key does not belong to the
// certificate it is paired with. Serving with such a pair would produce
// certificates that fail verification everywhere, so Load rejects it early.
var ErrKeyMismatch = errors.New("private key does not match certificate")

// ErrNoPEM reports that a file contains no PEM block of the expected type,
// typically because the wrong file was configured or it is truncated.
var ErrNoPEM = errors.New("no PEM data of the expected type")

// FileError ties a failure to the file it concerns. Operators fixing a
// broken CA directory need to know which of the four files is wrong, so
// every error from Create and Load about on-disk material carries the path.
type FileError struct {
	Path string // the file the problem is about
	Err  error  // the underlying problem; may wrap ErrExists, ErrKeyMismatch, ErrNoPEM, fs errors
}

func (e *FileError) Error() string { return "pki: " + e.Path + ": " + e.Err.Error() }

// Unwrap lets callers test the cause with errors.Is / errors.As.
func (e *FileError) Unwrap() error { return e.Err }

func fileErr(path string, err error) error { return &FileError{Path: path, Err: err} }
