// Package atomicfile writes state files so that a crash or power cut at
// any point leaves either the old content or the new, never a mix: a temp
// file in the same directory (created O_EXCL, mode 0600), fsync, rename or
// link, then an fsync of the directory so the new name is durable.
//
// It sits in hal, the bottom layer, because the device-identity packages
// (enroll) and the daemon's own state (agent) both write through it.
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// CreateExclusive writes data to path (mode perm) through an O_EXCL temp file,
// fsync and link(2), then fsyncs the directory. It fails with fs.ErrExist
// if path exists.
func CreateExclusive(path string, data []byte, perm os.FileMode) error {
	tmp, err := writeTemp(filepath.Dir(path), filepath.Base(path), data, perm)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, path); err != nil {
		var le *os.LinkError
		if errors.As(err, &le) && (errors.Is(le.Err, syscall.EPERM) || errors.Is(le.Err, syscall.EOPNOTSUPP)) {
			// Filesystems without hard links (vfat): check, then rename.
			if _, serr := os.Lstat(path); serr == nil {
				return fs.ErrExist
			}
			if err := os.Rename(tmp, path); err != nil {
				return err
			}
			return SyncDir(filepath.Dir(path))
		}
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// writeTemp creates dir/.name.tmp-XXXX with O_EXCL (0600, then perm), writes data
// and fsyncs it. It returns the temp file's path.
func writeTemp(dir, name string, data []byte, perm os.FileMode) (string, error) {
	f, err := os.CreateTemp(dir, "."+name+".tmp-")
	if err != nil {
		return "", err
	}
	tmp := f.Name()
	// CreateTemp uses O_EXCL and 0600, so a secret is never readable by
	// others, not even for a moment; public files are widened here.
	err = f.Chmod(perm)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return "", err
	}
	return tmp, nil
}

// WriteFile replaces path with data (mode perm) through a temp file
// in the same directory, fsync, rename and a directory fsync, so a reader
// or a power cut sees either the old or the new content, never a mix.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := writeTemp(dir, filepath.Base(path), data, perm)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return SyncDir(dir)
}

// SyncDir fsyncs a directory so renames and unlinks in it are durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	return nil
}

// EnsurePrivateDir creates dir (and parents) at 0700, and tightens an
// existing dir that grants group or other access to 0700.
func EnsurePrivateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("state dir %s is not a directory", dir)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("state dir %s has mode %v and cannot be made 0700: %w", dir, fi.Mode().Perm(), err)
		}
	}
	return nil
}
