//! Measuring models side by side ([`compare`]), the report and its charts
//! ([`report`], [`plots`]), and the comparative study that trains, shrinks and
//! measures the five families on one dataset ([`study`]).

pub mod compare;
pub mod plots;
pub mod report;
pub mod study;
