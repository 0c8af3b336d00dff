//! Printing the tree: plain text, text with colour for a terminal, or JSON.

use std::fmt::Write as _;

use super::tree::{Health, Namespace, Node};

/// How to print.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Text without escape codes.
    Plain,
    /// Text with ANSI colours for the state.
    Colour,
}

/// The trees as text, one block per namespace, in the style of `clusterctl describe`.
pub fn text(namespaces: &[Namespace], style: Style) -> String {
    let mut out = String::new();
    for (index, namespace) in namespaces.iter().enumerate() {
        if index > 0 {
            out.push('\n');
        }
        let _ = writeln!(out, "NAMESPACE {}", namespace.namespace);
        if namespace.items.is_empty() {
            out.push_str("  (no upgrader objects)\n");
        }
        let count = namespace.items.len();
        for (i, node) in namespace.items.iter().enumerate() {
            write_node(&mut out, node, "", i + 1 == count, style);
        }
    }
    out
}

fn write_node(out: &mut String, node: &Node, prefix: &str, last: bool, style: Style) {
    let branch = if last { "└─" } else { "├─" };
    let state = paint(&node.state, node.health, style);
    let _ = write!(out, "{prefix}{branch}{}/{}  {state}", node.kind, node.name);
    for detail in &node.details {
        let _ = write!(out, "  {detail}");
    }
    out.push('\n');
    let child_prefix = format!("{prefix}{}", if last { "  " } else { "│ " });
    if !node.message.is_empty() {
        let pipe = if node.children.is_empty() {
            "  "
        } else {
            "│ "
        };
        let _ = writeln!(out, "{child_prefix}{pipe}{}", one_line(&node.message));
    }
    let count = node.children.len();
    for (i, child) in node.children.iter().enumerate() {
        write_node(out, child, &child_prefix, i + 1 == count, style);
    }
}

/// A message on one line, at most 160 characters.
fn one_line(message: &str) -> String {
    let flat: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut chars = flat.chars();
    let head: String = chars.by_ref().take(160).collect();
    if chars.next().is_some() {
        format!("{head}…")
    } else {
        head
    }
}

fn paint(state: &str, health: Health, style: Style) -> String {
    if style == Style::Plain {
        return state.to_owned();
    }
    let code = match health {
        Health::Ok => "32",
        Health::Working => "36",
        Health::Paused => "33",
        Health::Failing => "31",
        Health::Unknown => "90",
    };
    format!("\u{1b}[{code}m{state}\u{1b}[0m")
}

/// The trees as pretty JSON.
pub fn json(namespaces: &[Namespace]) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(namespaces)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(kind: &str, name: &str, health: Health, message: &str) -> Node {
        Node {
            kind: kind.to_owned(),
            name: name.to_owned(),
            health,
            state: format!("{health:?}"),
            message: message.to_owned(),
            details: vec!["v1.31.2".to_owned()],
            children: Vec::new(),
        }
    }

    fn sample() -> Vec<Namespace> {
        let mut plan = leaf("Plan", "p", Health::Ok, "");
        let mut upgrader = leaf(
            "ClusterClassClusterUpgrader",
            "u",
            Health::Failing,
            "line\none",
        );
        upgrader
            .children
            .push(leaf("Cluster", "prod", Health::Ok, ""));
        plan.children.push(upgrader);
        vec![Namespace {
            namespace: "default".to_owned(),
            items: vec![leaf("MachineImage", "static", Health::Working, ""), plan],
        }]
    }

    #[test]
    fn plain_text_draws_the_tree() {
        let text = text(&sample(), Style::Plain);
        let expected = "NAMESPACE default\n\
            ├─MachineImage/static  Working  v1.31.2\n\
            └─Plan/p  Ok  v1.31.2\n\
            \x20 └─ClusterClassClusterUpgrader/u  Failing  v1.31.2\n\
            \x20   │ line one\n\
            \x20   └─Cluster/prod  Ok  v1.31.2\n";
        assert_eq!(text, expected);
        assert!(!text.contains('\u{1b}'));
    }

    #[test]
    fn colour_marks_the_state_only() {
        let text = text(&sample(), Style::Colour);
        assert!(text.contains("\u{1b}[31mFailing\u{1b}[0m"));
        assert!(text.contains("\u{1b}[32mOk\u{1b}[0m"));
        assert!(text.contains("Plan/p  "), "names stay uncoloured");
    }

    #[test]
    fn json_carries_the_same_tree() {
        let value: serde_json::Value = serde_json::from_str(&json(&sample()).unwrap()).unwrap();
        assert_eq!(value[0]["namespace"], "default");
        let upgrader = &value[0]["items"][1]["children"][0];
        assert_eq!(upgrader["health"], "Failing");
        assert_eq!(upgrader["children"][0]["name"], "prod");
        assert!(value[0]["items"][0].get("message").is_none());
    }

    #[test]
    fn long_messages_are_cut_to_one_line() {
        let long = "x".repeat(500);
        assert_eq!(one_line(&long).chars().count(), 161);
        assert_eq!(one_line("a\tb"), "a b");
    }
}
