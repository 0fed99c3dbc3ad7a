package paths

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// fakeEnv describes a machine: variables, files that exist, and a home.
func fakeEnv(t *testing.T, vars map[string]string, files []string, home string) Env {
	t.Helper()
	return Env{
		Getenv: func(k string) string { return vars[k] },
		Stat: func(p string) (fs.FileInfo, error) {
			for _, f := range files {
				if f == p {
					return nil, nil
				}
			}
			return nil, fs.ErrNotExist
		},
		HomeDir: func() (string, error) {
			if home == "" {
				return "", errors.New("$HOME is not defined")
			}
			return home, nil
		},
	}
}

func TestStateDir(t *testing.T) {
	t.Parallel()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	all := map[string]string{
		EnvStateDir:       "/srv/state/api",
		EnvKubernetesHost: "10.0.0.1",
		EnvXDGStateHome:   "/home/u/.xdg",
	}
	without := func(keys ...string) map[string]string {
		m := map[string]string{}
		for k, v := range all {
			m[k] = v
		}
		for _, k := range keys {
			delete(m, k)
		}
		return m
	}
	markers := []string{DockerEnvFile, PodmanEnvFile}

	tests := []struct {
		name     string
		explicit string
		vars     map[string]string
		files    []string
		home     string
		wantDir  string
		wantSrc  Source
	}{
		{"flag beats everything", "/opt/crank/x", all, markers, "/home/u", "/opt/crank/x", SourceFlag},
		{"flag is cleaned", "/opt//crank/./x/", all, nil, "/home/u", "/opt/crank/x", SourceFlag},
		{"relative flag made absolute", "state", nil, nil, "/home/u", filepath.Join(wd, "state"), SourceFlag},
		{"env beats container", "", all, markers, "/home/u", "/srv/state/api", SourceEnv},
		{"env used as is, no worker appended", "", map[string]string{EnvStateDir: "/data/"}, nil, "/home/u", "/data", SourceEnv},
		{"kubernetes", "", without(EnvStateDir), nil, "/home/u", "/var/lib/crank/api", SourceContainer},
		{"docker marker", "", without(EnvStateDir, EnvKubernetesHost), []string{DockerEnvFile}, "/home/u", "/var/lib/crank/api", SourceContainer},
		{"podman marker", "", without(EnvStateDir, EnvKubernetesHost), []string{PodmanEnvFile}, "/home/u", "/var/lib/crank/api", SourceContainer},
		{"xdg", "", without(EnvStateDir, EnvKubernetesHost), nil, "/home/u", "/home/u/.xdg/crank/api", SourceNative},
		{"relative xdg ignored", "", map[string]string{EnvXDGStateHome: "rel"}, nil, "/home/u", "/home/u/.local/state/crank/api", SourceNative},
		{"home fallback", "", nil, nil, "/home/u", "/home/u/.local/state/crank/api", SourceNative},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir, src, err := StateDir(tt.explicit, "api", fakeEnv(t, tt.vars, tt.files, tt.home))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]string{tt.wantDir, string(tt.wantSrc)}, []string{dir, string(src)}); diff != "" {
				t.Errorf("StateDir (-want +got):\n%s", diff)
			}
		})
	}
}

func TestStateDirNilEnv(t *testing.T) {
	t.Parallel()
	// A zero Env is an empty environment: only the home rule can apply, and
	// it uses the real home directory.
	home, err := os.UserHomeDir()
	if err != nil || !filepath.IsAbs(home) {
		t.Skip("no usable home directory")
	}
	env := Env{Stat: func(string) (fs.FileInfo, error) { return nil, fs.ErrNotExist }}
	dir, src, err := StateDir("", "api", env)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{filepath.Join(home, ".local/state/crank/api"), "native"}, []string{dir, string(src)}); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestStateDirNoHome(t *testing.T) {
	t.Parallel()
	for _, home := range []string{"", "relative/home"} {
		_, _, err := StateDir("", "api", fakeEnv(t, nil, nil, home))
		if !errors.Is(err, ErrNoHome) {
			t.Errorf("home %q: err = %v, want ErrNoHome", home, err)
		}
		var pe *PathError
		if !errors.As(err, &pe) {
			t.Errorf("home %q: err %T is not *PathError", home, err)
		}
	}
}

func TestStateDirInvalidWorker(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("a", 64)
	for _, name := range []string{"", "../x", "..", ".", "A", "Api", "a/b", "-a", "a-", "a_b", "a.b", "a b", long, "é"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			// Every rule must refuse, including those that ignore the name.
			for _, explicit := range []string{"", "/explicit"} {
				dir, _, err := StateDir(explicit, name, fakeEnv(t, nil, nil, "/home/u"))
				if !errors.Is(err, ErrInvalidWorker) {
					t.Fatalf("StateDir(%q, %q) = %q, %v; want ErrInvalidWorker", explicit, name, dir, err)
				}
				var we *WorkerError
				if !errors.As(err, &we) || we.Name != name {
					t.Errorf("err = %#v, want *WorkerError naming %q", err, name)
				}
				if !strings.Contains(err.Error(), `"`+name+`"`) {
					t.Errorf("error %q does not quote the name", err)
				}
			}
		})
	}
}

func TestValidWorker(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"a", "0", "api", "api-1", "a-b-c", strings.Repeat("a", 63), "1a"} {
		if !ValidWorker(name) {
			t.Errorf("ValidWorker(%q) = false, want true", name)
		}
	}
}

func TestEnsureChosenHint(t *testing.T) {
	t.Parallel()
	if os.Geteuid() == 0 {
		t.Skip("root may create any directory")
	}
	ro := t.TempDir()
	if err := os.Chmod(ro, 0o500); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Chmod(ro, 0o700) })
	dir := filepath.Join(ro, "crank", "hello")
	tests := []struct {
		src  Source
		want []string
	}{
		{SourceContainer, []string{"permission denied", dir, "container default", DockerEnvFile, "--state DIR", "$" + EnvStateDir}},
		{SourceNative, []string{"permission denied", "default for this user", "--state DIR"}},
		{SourceEnv, []string{"$" + EnvStateDir + " names it"}},
		{SourceFlag, []string{"--state names it"}},
	}
	for _, tt := range tests {
		t.Run(string(tt.src), func(t *testing.T) {
			t.Parallel()
			err := EnsureChosen(dir, tt.src)
			if !errors.Is(err, fs.ErrPermission) {
				t.Fatalf("EnsureChosen = %v, want a permission error", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
	if err := EnsureChosen(filepath.Join(t.TempDir(), "ok"), SourceContainer); err != nil {
		t.Errorf("EnsureChosen of a creatable directory: %v", err)
	}
}
