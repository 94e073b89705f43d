package port

import "testing"

func TestParse(t *testing.T) {
	tests := []struct {
		name, in string
		want     Spec
		bad      bool
	}{
		{name: "tcp", in: "tcp/22", want: Spec{TCP, 22}},
		{name: "udp upper case", in: "UDP/53", want: Spec{UDP, 53}},
		{name: "sctp max", in: "sctp/65535", want: Spec{SCTP, 65535}},
		{name: "bad no slash", in: "tcp22", bad: true},
		{name: "bad proto", in: "icmp/1", bad: true},
		{name: "bad zero", in: "tcp/0", bad: true},
		{name: "bad too big", in: "tcp/65536", bad: true},
		{name: "bad negative", in: "tcp/-1", bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if tt.bad {
				if err == nil {
					t.Fatalf("Parse(%q) = %v, want error", tt.in, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Parse(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
			if back, _ := Parse(got.String()); back != got {
				t.Fatalf("round trip of %v gave %v", got, back)
			}
		})
	}
}

func TestParseList(t *testing.T) {
	got, err := ParseList("tcp/22, udp/53")
	if err != nil || len(got) != 2 || Join(got) != "tcp/22,udp/53" {
		t.Fatalf("ParseList = %v, %v", got, err)
	}
	if _, err := ParseList("tcp/22,"); err == nil {
		t.Fatal("trailing comma accepted")
	}
}
