package statedir

import (
	"errors"
	"io/fs"
	"os"

	"devid/hal/atomicfile"
)

func renameAside(d *Dir, name, aside string) error {
	err := os.Rename(d.File(name), d.File(aside))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return atomicfile.SyncDir(d.Path)
}
