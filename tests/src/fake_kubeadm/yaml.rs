//! The YAML subset kubeadm configuration files use, parsed into JSON values
//! (as `sigs.k8s.io/yaml` converts YAML to JSON before kubeadm decodes it):
//! `---`-separated documents, block mappings and sequences (a sequence may sit
//! at its key's indentation), plain/single-/double-quoted scalars, flow
//! `[a, b]` / `{k: v}` of scalars, `#` comments. Anchors, tags and block
//! scalars (`|`, `>`) are refused with the line number, never misread.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("yaml: line {line}: {msg}")]
pub struct YamlError {
    pub line: usize,
    pub msg: String,
}

fn err(line: usize, msg: impl Into<String>) -> YamlError {
    YamlError {
        line,
        msg: msg.into(),
    }
}

#[derive(Debug, Clone)]
struct Line {
    no: usize,
    indent: usize,
    text: String,
}

/// Every non-empty document of `text`.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, YamlError> {
    let mut docs = Vec::new();
    let mut cur: Vec<Line> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let no = i + 1;
        let trimmed = raw.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") || trimmed == "..." {
            if !cur.is_empty() {
                docs.push(parse_lines(&mut cur)?);
                cur.clear();
            }
            continue;
        }
        if raw.contains('\t') && raw.trim_start().len() != raw.len() && raw.starts_with('\t') {
            return Err(err(
                no,
                "found character that cannot start any token (a tab)",
            ));
        }
        let stripped = strip_comment(trimmed);
        if stripped.trim().is_empty() {
            continue;
        }
        let indent = stripped.len() - stripped.trim_start().len();
        cur.push(Line {
            no,
            indent,
            text: stripped.trim().to_string(),
        });
    }
    if !cur.is_empty() {
        docs.push(parse_lines(&mut cur)?);
    }
    Ok(docs)
}

fn strip_comment(s: &str) -> &str {
    let (mut single, mut double) = (false, false);
    let b = s.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'\'' if !double => single = !single,
            b'"' if !single => double = !double,
            b'#' if !single && !double && (i == 0 || b[i - 1] == b' ') => return &s[..i],
            _ => {}
        }
    }
    s
}

fn parse_lines(lines: &mut [Line]) -> Result<Value, YamlError> {
    // A JSON document (JSON is YAML; kubeadm reads it, and kubeha renders
    // its configs as JSON documents).
    if lines[0].text.starts_with('{') {
        let text: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        return serde_json::from_str(&text.join("\n"))
            .map_err(|e| err(lines[0].no + e.line().saturating_sub(1), e.to_string()));
    }
    let mut i = 0;
    let indent = lines[0].indent;
    let v = parse_node(lines, &mut i, indent)?;
    if i < lines.len() {
        return Err(err(
            lines[i].no,
            "did not find expected key (bad indentation)",
        ));
    }
    Ok(v)
}

fn is_seq_item(t: &str) -> bool {
    t == "-" || t.starts_with("- ")
}

fn parse_node(lines: &mut [Line], i: &mut usize, indent: usize) -> Result<Value, YamlError> {
    let l = &lines[*i];
    if l.indent != indent {
        return Err(err(l.no, "bad indentation"));
    }
    if is_seq_item(&l.text) {
        parse_seq(lines, i, indent)
    } else if split_key(&l.text).is_some() {
        parse_map(lines, i, indent)
    } else {
        let v = scalar(&l.text, l.no)?;
        *i += 1;
        Ok(v)
    }
}

fn parse_map(lines: &mut [Line], i: &mut usize, indent: usize) -> Result<Value, YamlError> {
    let mut map = Map::new();
    while *i < lines.len() && lines[*i].indent == indent && !is_seq_item(&lines[*i].text) {
        let no = lines[*i].no;
        let Some((key, rest)) = split_key(&lines[*i].text) else {
            return Err(err(no, "could not find expected ':'"));
        };
        let key = match scalar(&key, no)? {
            Value::String(s) => s,
            other => other.to_string(),
        };
        *i += 1;
        let value = if rest.is_empty() {
            match lines.get(*i) {
                Some(n) if n.indent > indent => {
                    let ni = n.indent;
                    parse_node(lines, i, ni)?
                }
                Some(n) if n.indent == indent && is_seq_item(&n.text) => {
                    parse_seq(lines, i, indent)?
                }
                _ => Value::Null,
            }
        } else {
            scalar(&rest, no)?
        };
        if map.insert(key.clone(), value).is_some() {
            return Err(err(no, format!("key {key:?} already set in map")));
        }
    }
    if *i < lines.len() && lines[*i].indent > indent {
        return Err(err(
            lines[*i].no,
            "mapping values are not allowed in this context",
        ));
    }
    Ok(Value::Object(map))
}

fn parse_seq(lines: &mut [Line], i: &mut usize, indent: usize) -> Result<Value, YamlError> {
    let mut items = Vec::new();
    while *i < lines.len() && lines[*i].indent == indent && is_seq_item(&lines[*i].text) {
        let no = lines[*i].no;
        let rest = lines[*i].text[1..].trim_start().to_string();
        if rest.is_empty() {
            *i += 1;
            match lines.get(*i) {
                Some(n) if n.indent > indent => {
                    let ni = n.indent;
                    items.push(parse_node(lines, i, ni)?);
                }
                _ => items.push(Value::Null),
            }
        } else if is_seq_item(&rest) || split_key(&rest).is_some() {
            // `- key: v` opens a mapping (or nested sequence) whose column is
            // that of `key`: rewrite the line as if it stood there alone.
            let offset = lines[*i].text.len() - rest.len();
            lines[*i].indent = indent + offset;
            lines[*i].text = rest;
            let ni = lines[*i].indent;
            items.push(parse_node(lines, i, ni)?);
        } else {
            items.push(scalar(&rest, no)?);
            *i += 1;
        }
    }
    Ok(Value::Array(items))
}

/// `key: rest` (rest may be empty) when the line is a mapping entry.
fn split_key(t: &str) -> Option<(String, String)> {
    let b = t.as_bytes();
    let (mut single, mut double) = (false, false);
    if b.first().is_some_and(|c| matches!(c, b'[' | b'{')) {
        return None;
    }
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'\'' if !double && (i == 0 || single) => single = !single,
            b'"' if !single && (i == 0 || double) => double = !double,
            b':' if !single && !double && (i + 1 == b.len() || b[i + 1] == b' ') => {
                return Some((t[..i].trim().to_string(), t[i + 1..].trim().to_string()));
            }
            _ => {}
        }
    }
    None
}

fn scalar(t: &str, no: usize) -> Result<Value, YamlError> {
    let t = t.trim();
    if let Some(inner) = t.strip_prefix('"') {
        let Some(inner) = inner.strip_suffix('"') else {
            return Err(err(no, "found unexpected end of stream (unterminated \")"));
        };
        return Ok(Value::String(unescape(inner, no)?));
    }
    if let Some(inner) = t.strip_prefix('\'') {
        let Some(inner) = inner.strip_suffix('\'') else {
            return Err(err(no, "found unexpected end of stream (unterminated ')"));
        };
        return Ok(Value::String(inner.replace("''", "'")));
    }
    if let Some(inner) = t.strip_prefix('[') {
        let Some(inner) = inner.strip_suffix(']') else {
            return Err(err(no, "did not find expected ',' or ']'"));
        };
        return split_flow(inner, no)?
            .iter()
            .map(|s| scalar(s, no))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array);
    }
    if let Some(inner) = t.strip_prefix('{') {
        let Some(inner) = inner.strip_suffix('}') else {
            return Err(err(no, "did not find expected ',' or '}'"));
        };
        let mut map = Map::new();
        for item in split_flow(inner, no)? {
            let Some((k, v)) = split_key(&item) else {
                return Err(err(
                    no,
                    format!("flow mapping entry without ':' in {item:?}"),
                ));
            };
            let k = match scalar(&k, no)? {
                Value::String(s) => s,
                other => other.to_string(),
            };
            map.insert(k, scalar(&v, no)?);
        }
        return Ok(Value::Object(map));
    }
    if let Some(c) = t.chars().next()
        && matches!(c, '|' | '>' | '&' | '*' | '!' | '%' | '@' | '`')
    {
        return Err(err(
            no,
            format!("unsupported YAML construct {c:?} (fake-kubeadm's parser)"),
        ));
    }
    Ok(match t {
        "" | "~" | "null" | "Null" | "NULL" => Value::Null,
        "true" | "True" | "TRUE" => Value::Bool(true),
        "false" | "False" | "FALSE" => Value::Bool(false),
        _ => {
            if let Ok(n) = t.parse::<i64>() {
                Value::from(n)
            } else if t.contains('.')
                && t.chars()
                    .all(|c| c.is_ascii_digit() || c == '.' || c == '-')
                && let Ok(f) = t.parse::<f64>()
            {
                Value::from(f)
            } else {
                Value::String(t.to_string())
            }
        }
    })
}

fn split_flow(inner: &str, no: usize) -> Result<Vec<String>, YamlError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut single, mut double) = (false, false);
    for c in inner.chars() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '[' | '{' if !single && !double => {
                return Err(err(no, "nested flow collections are not supported"));
            }
            ',' if !single && !double => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    let out: Vec<String> = out.into_iter().map(|s| s.trim().to_string()).collect();
    if out.len() == 1 && out[0].is_empty() {
        return Ok(Vec::new());
    }
    Ok(out)
}

fn unescape(s: &str, no: usize) -> Result<String, YamlError> {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('"') => out.push('"'),
            Some('\\') => out.push('\\'),
            Some('/') => out.push('/'),
            other => return Err(err(no, format!("found unknown escape character {other:?}"))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_documents_are_yaml() {
        let docs = parse_documents("{\"a\": {\"b\": [1, \"x # y\"]},\n \"c\": true}\n---\nd: 1\n")
            .unwrap();
        assert_eq!(docs[0]["a"]["b"][1], "x # y");
        assert_eq!(docs[0]["c"], true);
        assert_eq!(docs[1]["d"], 1);
        assert!(parse_documents("{\"a\": }").is_err());
    }

    #[test]
    fn kubeadm_shapes() {
        let text = "\
# comment
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: \"10.0.0.1\"   # trailing comment
  bindPort: 6443
nodeRegistration:
  name: n1
  taints: []
  kubeletExtraArgs:
  - name: node-ip
    value: 10.0.0.1
  - {name: v, value: '2'}
skipPhases: [addon/kube-proxy, \"mark-control-plane\"]
---
kind: ClusterConfiguration
apiServer:
  certSANs:
    - a
    - 'b#c'
  extraArgs: {}
empty:
";
        let docs = parse_documents(text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(
            docs[0],
            json!({
                "apiVersion": "kubeadm.k8s.io/v1beta4",
                "kind": "InitConfiguration",
                "localAPIEndpoint": {"advertiseAddress": "10.0.0.1", "bindPort": 6443},
                "nodeRegistration": {"name": "n1", "taints": [], "kubeletExtraArgs": [
                    {"name": "node-ip", "value": "10.0.0.1"}, {"name": "v", "value": "2"}]},
                "skipPhases": ["addon/kube-proxy", "mark-control-plane"],
            })
        );
        assert_eq!(
            docs[1],
            json!({"kind": "ClusterConfiguration",
                   "apiServer": {"certSANs": ["a", "b#c"], "extraArgs": {}}, "empty": null})
        );
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert_eq!(parse_documents("a: |\n  x\n").unwrap_err().line, 1);
        assert_eq!(parse_documents("a: 1\na: 2\n").unwrap_err().line, 2);
        assert!(parse_documents("a:\n  b: 1\n c: 2\n").is_err());
        assert!(parse_documents("a: \"x\n").is_err());
    }
}
