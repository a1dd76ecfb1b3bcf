package embedded

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"path/filepath"
)

// The embedded Kafka broker (kfake) keeps consumer-group commits and
// producer ids in append-only logs of framed entries: 4 bytes length, 4
// bytes CRC-32C of the rest, 2 bytes version, data. A write cut short (a
// full disk, a crash mid-write) leaves a torn entry, and the broker keeps
// appending after it; on load it stops reading at the first bad entry, so
// every commit written after the tear would be lost — and a restart would
// redeliver everything committed since. repairLogs removes torn bytes
// wherever they are, keeping every complete entry in order, before the
// broker loads.

// appendLogs are the broker's framed append logs, relative to its data dir.
var appendLogs = []string{"groups.log", "pids.log"}

const (
	entryHeaderSize = 10 // length, CRC, version
	// maxEntry bounds an entry's length field when resynchronising: the
	// logs hold small JSON documents.
	maxEntry = 16 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// entryAt returns the size of the valid entry starting at raw[pos], or 0.
func entryAt(raw []byte, pos int) int {
	if pos+entryHeaderSize > len(raw) {
		return 0
	}
	length := int(binary.LittleEndian.Uint32(raw[pos : pos+4]))
	if length < 2 || length > maxEntry || pos+8+length > len(raw) {
		return 0
	}
	if crc32.Checksum(raw[pos+8:pos+8+length], castagnoli) != binary.LittleEndian.Uint32(raw[pos+4:pos+8]) {
		return 0
	}
	return 8 + length
}

// repairLog returns raw without its torn bytes, and how many it dropped.
func repairLog(raw []byte) ([]byte, int) {
	out := make([]byte, 0, len(raw))
	dropped := 0
	for pos := 0; pos < len(raw); {
		if n := entryAt(raw, pos); n > 0 {
			out = append(out, raw[pos:pos+n]...)
			pos += n
			continue
		}
		// Skip to the next position where a complete entry starts (a
		// CRC-32C match on a plausible length: not by chance).
		next := pos + 1
		for next < len(raw) && entryAt(raw, next) == 0 {
			next++
		}
		dropped += next - pos
		pos = next
	}
	return out, dropped
}

// repairLogs repairs the broker's append logs under dir in place and
// returns their contents by name (absent logs left out).
func repairLogs(dir string, log *slog.Logger) (map[string][]byte, error) {
	logs := map[string][]byte{}
	for _, name := range appendLogs {
		path := filepath.Join(dir, name)
		raw, err := os.ReadFile(path)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("embedded: read %s: %w", path, err)
		}
		fixed, dropped := repairLog(raw)
		logs[name] = fixed
		if dropped == 0 {
			continue
		}
		if err := replaceFile(path, fixed); err != nil {
			return nil, fmt.Errorf("embedded: repair %s: %w", path, err)
		}
		log.Warn("embedded kafka: removed torn bytes from a log; every complete entry kept", "file", path, "bytes", dropped)
	}
	return logs, nil
}

// replaceFile writes data to path atomically: a temporary file, fsync,
// rename over path, fsync of the directory.
func replaceFile(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
