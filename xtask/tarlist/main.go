// tarlist prints what Go's archive/tar reads from a tar archive, one JSON object per entry,
// so that imagestore's own tar reader can be compared against a second, independent parser
// (`cargo xtask differential`).
//
//	tarlist [FILE]   list FILE (stdin when absent); exit 1 with a message if archive/tar fails
//	tarlist -batch   read file paths from stdin, one per line; print one JSON object per file:
//	                 {"file":...,"entries":[...]} or {"file":...,"error":"..."}
//
// Standard library only: it is built with GO111MODULE=off and no network.
package main

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
)

// entry is one archive member as archive/tar reports it. Names are raw (not normalised);
// byte-valued fields that need not be UTF-8 are hex.
type entry struct {
	Name      string            `json:"name"`
	NameHex   string            `json:"name_hex"`
	Type      string            `json:"type"`
	Size      int64             `json:"size"`
	Mode      int64             `json:"mode"`
	Uid       int               `json:"uid"`
	Gid       int               `json:"gid"`
	Uname     string            `json:"uname"`
	Gname     string            `json:"gname"`
	Mtime     int64             `json:"mtime"`
	MtimeNsec int               `json:"mtime_nsec"`
	Link      string            `json:"link"`
	LinkHex   string            `json:"link_hex"`
	Devmajor  int64             `json:"devmajor"`
	Devminor  int64             `json:"devminor"`
	Xattrs    map[string]string `json:"xattrs"`
	Sha256    string            `json:"sha256,omitempty"`
	Data      int64             `json:"data"`
}

// list reads every entry of the archive in r. PAX global headers are metadata, not entries,
// and are left out.
func list(r io.Reader) ([]entry, error) {
	tr := tar.NewReader(r)
	out := []entry{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("entry %d: %v", len(out), err)
		}
		if h.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		e := entry{
			Name:      h.Name,
			NameHex:   hex.EncodeToString([]byte(h.Name)),
			Type:      string([]byte{h.Typeflag}),
			Size:      h.Size,
			Mode:      h.Mode,
			Uid:       h.Uid,
			Gid:       h.Gid,
			Uname:     h.Uname,
			Gname:     h.Gname,
			Mtime:     h.ModTime.Unix(),
			MtimeNsec: h.ModTime.Nanosecond(),
			Link:      h.Linkname,
			LinkHex:   hex.EncodeToString([]byte(h.Linkname)),
			Devmajor:  h.Devmajor,
			Devminor:  h.Devminor,
			Xattrs:    map[string]string{},
		}
		for k, v := range h.PAXRecords {
			if strings.HasPrefix(k, "SCHILY.xattr.") {
				e.Xattrs[strings.TrimPrefix(k, "SCHILY.xattr.")] = hex.EncodeToString([]byte(v))
			}
		}
		sum := sha256.New()
		n, err := io.Copy(sum, tr)
		if err != nil {
			return out, fmt.Errorf("entry %d (%q): reading data: %v", len(out), h.Name, err)
		}
		e.Data = n
		if h.Typeflag == tar.TypeReg || h.Typeflag == tar.TypeGNUSparse || h.Typeflag == tar.TypeCont {
			e.Sha256 = hex.EncodeToString(sum.Sum(nil))
		}
		out = append(out, e)
	}
}

func single(path string) int {
	var r io.Reader = os.Stdin
	if path != "" && path != "-" {
		f, err := os.Open(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "tarlist:", err)
			return 2
		}
		defer f.Close()
		r = f
	}
	entries, err := list(bufio.NewReader(r))
	w := bufio.NewWriter(os.Stdout)
	enc := json.NewEncoder(w)
	for _, e := range entries {
		enc.Encode(e)
	}
	w.Flush()
	if err != nil {
		fmt.Fprintln(os.Stderr, "tarlist: archive/tar:", err)
		return 1
	}
	return 0
}

type result struct {
	File    string  `json:"file"`
	Entries []entry `json:"entries"`
	Error   string  `json:"error,omitempty"`
}

func batch() int {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<16), 1<<20)
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	enc := json.NewEncoder(w)
	for in.Scan() {
		path := in.Text()
		if path == "" {
			continue
		}
		res := result{File: path}
		f, err := os.Open(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "tarlist:", err)
			return 2
		}
		res.Entries, err = list(bufio.NewReader(f))
		f.Close()
		if err != nil {
			res.Error = err.Error()
		}
		if err := enc.Encode(res); err != nil {
			fmt.Fprintln(os.Stderr, "tarlist:", err)
			return 2
		}
	}
	if err := in.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "tarlist: reading paths:", err)
		return 2
	}
	return 0
}

func main() {
	args := os.Args[1:]
	switch {
	case len(args) == 1 && args[0] == "-batch":
		os.Exit(batch())
	case len(args) == 0:
		os.Exit(single(""))
	case len(args) == 1 && !strings.HasPrefix(args[0], "-"):
		os.Exit(single(args[0]))
	default:
		fmt.Fprintln(os.Stderr, "usage: tarlist [FILE] | tarlist -batch < paths")
		os.Exit(2)
	}
}
