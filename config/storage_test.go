package config

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestStorageRedaction(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		s       Storage
		want    string // String()
		wantDSN string // RedactDSN
	}{
		{
			name:    "url with password",
			s:       Storage{Type: StoragePostgreSQL, DSN: "postgresql://ca:hunter2@db:5432/ca?sslmode=verify-full"},
			want:    `type=postgresql dsn="postgresql://ca:REDACTED@db:5432/ca?sslmode=verify-full"`,
			wantDSN: "postgresql://ca:REDACTED@db:5432/ca?sslmode=verify-full",
		},
		{
			name:    "url with escaped password",
			s:       Storage{Type: StoragePostgreSQL, DSN: "postgres://ca:hun%40ter2@db/ca"},
			wantDSN: "postgres://ca:REDACTED@db/ca",
		},
		{
			name:    "url with password parameter",
			s:       Storage{Type: StoragePostgreSQL, DSN: "postgresql://db/ca?password=hunter2&user=ca"},
			wantDSN: "postgresql://db/ca?password=REDACTED&user=ca",
		},
		{
			name:    "url without password",
			s:       Storage{Type: StoragePostgreSQL, DSN: "postgresql://ca@db/ca"},
			wantDSN: "postgresql://ca@db/ca",
		},
		{
			name:    "key=value",
			s:       Storage{Type: StoragePostgreSQL, DSN: "host=db user=ca password=hunter2 dbname=ca"},
			wantDSN: "host=db user=ca password=REDACTED dbname=ca",
		},
		{
			name:    "key=value quoted",
			s:       Storage{Type: StoragePostgreSQL, DSN: `host = db password = 'hun ter\'2' application_name='crank ca'`},
			wantDSN: `host=db password=REDACTED application_name='crank ca'`,
		},
		{
			name:    "unparseable url",
			s:       Storage{Type: StoragePostgreSQL, DSN: "postgresql://ca:hunter2@db:port/ca"},
			wantDSN: "REDACTED",
		},
		{
			name:    "unparseable key=value",
			s:       Storage{Type: StoragePostgreSQL, DSN: "host=db password='hunter2"},
			wantDSN: "REDACTED",
		},
		{
			name: "bbolt",
			s:    Storage{Type: StorageBolt, Path: "db/crank-ca.db"},
			want: "type=bbolt path=db/crank-ca.db",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if tt.want != "" && tt.s.String() != tt.want {
				t.Errorf("String() = %q, want %q", tt.s.String(), tt.want)
			}
			if got := RedactDSN(tt.s.DSN); got != tt.wantDSN {
				t.Errorf("RedactDSN = %q, want %q", got, tt.wantDSN)
			}
			var jsonLog, textLog bytes.Buffer
			slog.New(slog.NewJSONHandler(&jsonLog, nil)).Info("x", "storage", tt.s)
			slog.New(slog.NewTextHandler(&textLog, nil)).Info("x", "storage", tt.s)
			c := &Config{Storage: tt.s}
			slog.New(slog.NewJSONHandler(&jsonLog, nil)).Info("x", "config", c, "configValue", *c)
			if !strings.Contains(jsonLog.String(), `"configValue":{"dir"`) {
				t.Errorf("Config value not logged through LogValue: %s", jsonLog.String())
			}
			for name, out := range map[string]string{
				"String":      tt.s.String(),
				"%v":          fmt.Sprintf("%v", tt.s),
				"%+v config":  fmt.Sprintf("%+v", *c),
				"%#v":         fmt.Sprintf("%#v", tt.s),
				"%#v config":  fmt.Sprintf("%#v", *c),
				"slog json":   jsonLog.String(),
				"slog text":   textLog.String(),
				"LogValue":    tt.s.LogValue().String(),
				"config json": jsonLog.String(),
			} {
				if strings.Contains(out, "hunter2") || strings.Contains(out, "hun%40ter2") || strings.Contains(out, "ter\\'2") {
					t.Errorf("%s leaks the password: %s", name, out)
				}
			}
		})
	}
}
