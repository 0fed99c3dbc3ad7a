package workload

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Listen creates the Unix socket at path with permission bits mode and
// listens on it. The parent directory is created 0700 if it does not exist
// (an existing one is left as it is). The socket is bound in a private
// temporary directory, given its mode and only then renamed into place, so
// that it never exists at path with looser permissions. A socket left at
// path by a process that is gone is replaced; one that still answers is
// not (another agent serves there). Closing the listener removes the
// socket.
func Listen(ctx context.Context, path string, mode fs.FileMode) (net.Listener, error) {
	dir := filepath.Dir(path)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	if err := removeStale(ctx, path); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(dir, ".wl")
	if err != nil {
		return nil, fmt.Errorf("creating the socket: %w", err)
	}
	defer os.RemoveAll(tmp)
	tmpSock := filepath.Join(tmp, "s")
	if len(tmpSock) > MaxSocketPath {
		return nil, fmt.Errorf("socket directory %s is too deep for a Unix socket (at most %d bytes in all)", dir, MaxSocketPath)
	}
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "unix", tmpSock)
	if err != nil {
		return nil, err
	}
	ul := l.(*net.UnixListener)
	ul.SetUnlinkOnClose(false)
	if err := os.Chmod(tmpSock, mode); err != nil {
		_ = ul.Close()
		return nil, err
	}
	if err := os.Rename(tmpSock, path); err != nil {
		_ = ul.Close()
		return nil, fmt.Errorf("creating the socket: %w", err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		_ = ul.Close()
		return nil, err
	}
	return &listener{UnixListener: ul, path: path, fi: fi}, nil
}

// removeStale removes a socket at path that nobody answers on.
func removeStale(ctx context.Context, path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket; not replacing it", path)
	}
	d := net.Dialer{Timeout: time.Second}
	if c, err := d.DialContext(ctx, "unix", path); err == nil {
		_ = c.Close()
		return fmt.Errorf("%s is in use: another process serves on it", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// listener removes its socket on Close, unless another process has put its
// own there meanwhile.
type listener struct {
	*net.UnixListener
	path string
	fi   fs.FileInfo
}

func (l *listener) Close() error {
	err := l.UnixListener.Close()
	if fi, serr := os.Lstat(l.path); serr == nil && os.SameFile(fi, l.fi) {
		_ = os.Remove(l.path)
	}
	return err
}
