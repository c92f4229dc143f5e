// /proc/<pid>/stat and /proc/<pid>/task/<tid>/stat: "pid (comm) state ppid
// ...". The comm may itself hold spaces and parentheses, so it ends at the
// last ')'. fields[0] is the state, fields[1] the ppid, fields[11] and
// fields[12] utime and stime (clock ticks): field n of proc(5) is fields[n - 3].
export function parseProcStat(text: string): { comm: string; fields: string[] } | null {
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < open) return null;
  return { comm: text.slice(open + 1, close), fields: text.slice(close + 1).trim().split(' ') };
}
